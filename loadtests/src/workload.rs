//! What the load consists of: which operation comes next (the mix), which accounts it
//! touches (the shape) and how much money it moves (the amount range).
//!
//! Everything here is pure and seeded, so the runner can give every worker its own
//! generator and the tests can check the distributions without a server.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// The kinds of operation the load tester sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Transfer,
    Credit,
    Debit,
    History,
    Balance,
    /// A hold placed and then settled: two requests, one operation.
    Hold,
    /// An atomic batch of transfers: one request.
    Batch,
}

impl OperationKind {
    pub const ALL: [OperationKind; 7] = [
        OperationKind::Transfer,
        OperationKind::Credit,
        OperationKind::Debit,
        OperationKind::History,
        OperationKind::Balance,
        OperationKind::Hold,
        OperationKind::Batch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Transfer => "transfer",
            OperationKind::Credit => "credit",
            OperationKind::Debit => "debit",
            OperationKind::History => "history",
            OperationKind::Balance => "balance",
            OperationKind::Hold => "hold",
            OperationKind::Batch => "batch",
        }
    }

    /// Whether the operation moves money (and so may carry an idempotency key).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            OperationKind::Transfer
                | OperationKind::Credit
                | OperationKind::Debit
                | OperationKind::Hold
                | OperationKind::Batch
        )
    }
}

/// How a hold is settled once placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum HoldSettlement {
    /// Capture all of it.
    Post,
    /// Capture this much (less than held); the rest is released.
    PostPartial { amount_minor: i64 },
    /// Release all of it.
    Void,
}

impl HoldSettlement {
    /// What the source pays when this settlement is applied to a hold of `held_minor`.
    pub fn captured_minor(self, held_minor: i64) -> i64 {
        match self {
            HoldSettlement::Post => held_minor,
            HoldSettlement::PostPartial { amount_minor } => amount_minor,
            HoldSettlement::Void => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HoldSettlement::Post => "post",
            HoldSettlement::PostPartial { .. } => "partial post",
            HoldSettlement::Void => "void",
        }
    }
}

/// One transfer of an atomic batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLeg {
    pub from: i64,
    pub to: i64,
    pub amount_minor: i64,
}

/// One operation to perform. Accounts are user ids as the API knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Transfer {
        from: i64,
        to: i64,
        amount_minor: i64,
    },
    Credit {
        user: i64,
        amount_minor: i64,
    },
    Debit {
        user: i64,
        amount_minor: i64,
    },
    History {
        user: i64,
    },
    Balance {
        user: i64,
    },
    /// Place a hold of `amount_minor` from `from` to `to`, then settle it.
    Hold {
        from: i64,
        to: i64,
        amount_minor: i64,
        settlement: HoldSettlement,
    },
    /// One atomic batch of transfers.
    Batch {
        legs: Vec<BatchLeg>,
    },
}

impl Operation {
    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Transfer { .. } => OperationKind::Transfer,
            Operation::Credit { .. } => OperationKind::Credit,
            Operation::Debit { .. } => OperationKind::Debit,
            Operation::History { .. } => OperationKind::History,
            Operation::Balance { .. } => OperationKind::Balance,
            Operation::Hold { .. } => OperationKind::Hold,
            Operation::Batch { .. } => OperationKind::Batch,
        }
    }
}

/// The most legs a batch may have: the server's default `batch_legs_max`, beyond which
/// it refuses the whole batch as invalid.
pub const BATCH_LEGS_MAX: usize = 100;

/// How accounts are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "shape")]
pub enum Shape {
    /// Every account equally likely, on both sides.
    Uniform,
    /// Both sides drawn from a Zipf distribution over account ranks (rank 1, the first
    /// user, is the most popular); the exponent sets how skewed it is.
    Zipf { exponent: f64 },
    /// Every transfer (and debit) leaves one account; targets are uniform. The hot source
    /// drains, after which its transfers are refused with `insufficient_funds`: still
    /// real work serialized on one account.
    HotSource,
    /// Every transfer (and credit) goes to one account; sources are uniform.
    HotTarget,
    /// Every transfer is between the same two accounts, in a random direction.
    HotPair,
    /// Both sides uniform within the first `accounts` accounts.
    HotSet { accounts: usize },
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Uniform => write!(f, "uniform"),
            Shape::Zipf { exponent } => write!(f, "zipf(s={exponent})"),
            Shape::HotSource => write!(f, "hot-source"),
            Shape::HotTarget => write!(f, "hot-target"),
            Shape::HotPair => write!(f, "hot-pair"),
            Shape::HotSet { accounts } => write!(f, "hot-set({accounts})"),
        }
    }
}

/// Percentages of each operation; they add up to 100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub transfer_percent: u32,
    pub credit_percent: u32,
    pub debit_percent: u32,
    pub history_percent: u32,
    pub balance_percent: u32,
    #[serde(default)]
    pub hold_percent: u32,
    #[serde(default)]
    pub batch_percent: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            transfer_percent: 100,
            credit_percent: 0,
            debit_percent: 0,
            history_percent: 0,
            balance_percent: 0,
            hold_percent: 0,
            batch_percent: 0,
        }
    }
}

impl Mix {
    fn weights(&self) -> [(OperationKind, u32); 7] {
        [
            (OperationKind::Transfer, self.transfer_percent),
            (OperationKind::Credit, self.credit_percent),
            (OperationKind::Debit, self.debit_percent),
            (OperationKind::History, self.history_percent),
            (OperationKind::Balance, self.balance_percent),
            (OperationKind::Hold, self.hold_percent),
            (OperationKind::Batch, self.batch_percent),
        ]
    }

    /// The operation for a roll in `0..100`.
    fn pick(&self, roll: u32) -> OperationKind {
        let mut below = 0;
        for (kind, percent) in self.weights() {
            below += percent;
            if roll < below {
                return kind;
            }
        }
        unreachable!("a mix adds up to 100, checked when parsed")
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `transfer=70,credit=5,debit=5,history=5,balance=5,hold=5,batch=5`; omitted
    /// operations are 0.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            transfer_percent: 0,
            ..Mix::default()
        };
        for (name, percent) in percentages(text)? {
            let slot = match name {
                "transfer" => &mut mix.transfer_percent,
                "credit" => &mut mix.credit_percent,
                "debit" => &mut mix.debit_percent,
                "history" => &mut mix.history_percent,
                "balance" => &mut mix.balance_percent,
                "hold" => &mut mix.hold_percent,
                "batch" => &mut mix.batch_percent,
                other => {
                    return Err(format!(
                        "unknown operation {other:?} (transfer, credit, debit, history, balance, hold, batch)"
                    ));
                }
            };
            *slot = percent;
        }
        adds_up(mix.weights().iter().map(|(_, percent)| percent).sum())?;
        Ok(mix)
    }
}

/// How placed holds are settled, in percent adding up to 100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldMix {
    /// Captured whole.
    pub post_percent: u32,
    /// Captured in part (a uniform amount below the held one), the rest released.
    pub partial_percent: u32,
    /// Released whole.
    pub void_percent: u32,
}

impl Default for HoldMix {
    fn default() -> Self {
        HoldMix {
            post_percent: 60,
            partial_percent: 20,
            void_percent: 20,
        }
    }
}

impl FromStr for HoldMix {
    type Err = String;

    /// `post=60,partial=20,void=20`; omitted settlements are 0.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = HoldMix {
            post_percent: 0,
            partial_percent: 0,
            void_percent: 0,
        };
        for (name, percent) in percentages(text)? {
            let slot = match name {
                "post" => &mut mix.post_percent,
                "partial" => &mut mix.partial_percent,
                "void" => &mut mix.void_percent,
                other => return Err(format!("unknown settlement {other:?} (post, partial, void)")),
            };
            *slot = percent;
        }
        adds_up(mix.post_percent + mix.partial_percent + mix.void_percent)?;
        Ok(mix)
    }
}

/// The `name=percent` pairs of a comma-separated list such as `post=60,void=40`.
fn percentages(text: &str) -> Result<Vec<(&str, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=percent"))?;
            let percent = value
                .trim()
                .parse()
                .map_err(|_| format!("{value:?} is not a whole percentage"))?;
            Ok((name.trim(), percent))
        })
        .collect()
}

fn adds_up(total: u32) -> Result<(), String> {
    if total == 100 {
        Ok(())
    } else {
        Err(format!("the percentages add up to {total}, not 100"))
    }
}

/// Parse a decimal amount with at most two decimals ("12.34", "5") into minor units,
/// exactly (no float round trip), as the API does.
pub fn parse_minor(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|byte| byte.is_ascii_digit()) || fraction.len() > 2 {
        return Err(format!("{text:?} is not an amount like 12.34"));
    }
    if !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("{text:?} is not an amount like 12.34"));
    }
    let whole: i64 = whole.parse().map_err(|_| format!("{text:?} is too large"))?;
    let cents: i64 = format!("{fraction:0<2}")
        .parse()
        .map_err(|_| format!("{text:?} is not an amount"))?;
    whole
        .checked_mul(100)
        .and_then(|minor| minor.checked_add(cents))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parse a signed decimal amount as the API renders it ("-12.34").
pub fn parse_signed_minor(text: &str) -> Result<i64, String> {
    match text.trim().strip_prefix('-') {
        Some(rest) => parse_minor(rest).map(|minor| -minor),
        None => parse_minor(text),
    }
}

/// Render minor units as the API's decimal string ("12.34", "-0.05").
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}

/// Everything that decides what the next operation is.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// The accounts, in index order (index 0 is the hottest for the hot shapes and rank 1
    /// for Zipf).
    pub accounts: Arc<Vec<i64>>,
    pub shape: Shape,
    pub mix: Mix,
    pub amount_min_minor: i64,
    pub amount_max_minor: i64,
    /// Transfers per batch operation.
    pub batch_legs: usize,
    /// How holds are settled.
    pub hold_mix: HoldMix,
}

impl WorkloadConfig {
    /// Check what the types cannot: enough accounts for the shape, a sane amount range.
    pub fn validate(&self) -> Result<(), String> {
        let count = self.accounts.len();
        if count < 2 {
            return Err(format!("a workload needs at least 2 accounts, got {count}"));
        }
        if let Shape::HotSet { accounts } = self.shape
            && !(2..=count).contains(&accounts)
        {
            return Err(format!("a hot set needs 2 to {count} accounts, got {accounts}"));
        }
        if let Shape::Zipf { exponent } = self.shape
            && !(exponent.is_finite() && exponent > 0.0)
        {
            return Err(format!("the Zipf exponent must be above 0, got {exponent}"));
        }
        if !(1..=BATCH_LEGS_MAX).contains(&self.batch_legs) {
            return Err(format!(
                "a batch has 1 to {BATCH_LEGS_MAX} legs, got {}",
                self.batch_legs
            ));
        }
        if self.amount_min_minor <= 0 || self.amount_min_minor > self.amount_max_minor {
            return Err(format!(
                "the amount range {}..{} must be positive and ordered",
                format_minor(self.amount_min_minor),
                format_minor(self.amount_max_minor)
            ));
        }
        Ok(())
    }
}

/// A seeded generator of operations; one per worker.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    zipf: Option<Zipf<f64>>,
    random: SmallRng,
}

impl Workload {
    pub fn new(config: WorkloadConfig, seed: u64) -> Workload {
        config.validate().expect("the workload was validated when configured");
        let zipf = match config.shape {
            Shape::Zipf { exponent } => {
                Some(Zipf::new(config.accounts.len() as f64, exponent).expect("a validated Zipf exponent"))
            }
            _ => None,
        };
        Workload {
            config,
            zipf,
            random: SmallRng::seed_from_u64(seed),
        }
    }

    fn uniform(&mut self, below: usize) -> usize {
        self.random.random_range(0..below)
    }

    /// An index other than `other`, uniform within `0..below`.
    fn uniform_except(&mut self, below: usize, other: usize) -> usize {
        let index = self.random.random_range(0..below - 1);
        if index >= other { index + 1 } else { index }
    }

    fn zipf_index(&mut self) -> usize {
        let zipf = self.zipf.as_ref().expect("a Zipf shape has its distribution");
        // Samples are ranks 1..=n as floats.
        (zipf.sample(&mut self.random) as usize).saturating_sub(1)
    }

    /// Source and target indexes of a transfer, always different.
    pub fn pair(&mut self) -> (usize, usize) {
        let count = self.config.accounts.len();
        match self.config.shape {
            Shape::Uniform => {
                let from = self.uniform(count);
                (from, self.uniform_except(count, from))
            }
            Shape::Zipf { .. } => {
                let from = self.zipf_index();
                // Redraws are rare unless the exponent is very high; the uniform fallback
                // keeps the loop bounded.
                for _ in 0..ZIPF_REDRAWS_MAX {
                    let to = self.zipf_index();
                    if to != from {
                        return (from, to);
                    }
                }
                (from, self.uniform_except(count, from))
            }
            Shape::HotSource => (0, 1 + self.uniform(count - 1)),
            Shape::HotTarget => (1 + self.uniform(count - 1), 0),
            Shape::HotPair => {
                if self.random.random_bool(0.5) {
                    (0, 1)
                } else {
                    (1, 0)
                }
            }
            Shape::HotSet { accounts } => {
                let from = self.uniform(accounts);
                (from, self.uniform_except(accounts, from))
            }
        }
    }

    fn amount(&mut self) -> i64 {
        self.random
            .random_range(self.config.amount_min_minor..=self.config.amount_max_minor)
    }

    /// How the next hold is settled, for a hold of `held_minor`. A partial post of a
    /// one-cent hold cannot capture less than all of it, so it posts whole.
    fn settlement(&mut self, held_minor: i64) -> HoldSettlement {
        let mix = &self.config.hold_mix;
        let roll = self.random.random_range(0..100);
        if roll < mix.post_percent {
            HoldSettlement::Post
        } else if roll < mix.post_percent + mix.partial_percent {
            if held_minor < 2 {
                HoldSettlement::Post
            } else {
                HoldSettlement::PostPartial {
                    amount_minor: self.random.random_range(1..held_minor),
                }
            }
        } else {
            HoldSettlement::Void
        }
    }

    pub fn next_operation(&mut self) -> Operation {
        let kind = self.config.mix.pick(self.random.random_range(0..100));
        let (from, to) = self.pair();
        let accounts = self.config.accounts.clone();
        match kind {
            OperationKind::Transfer => Operation::Transfer {
                from: accounts[from],
                to: accounts[to],
                amount_minor: self.amount(),
            },
            OperationKind::Credit => Operation::Credit {
                user: accounts[to],
                amount_minor: self.amount(),
            },
            OperationKind::Debit => Operation::Debit {
                user: accounts[from],
                amount_minor: self.amount(),
            },
            OperationKind::History => Operation::History { user: accounts[from] },
            OperationKind::Balance => Operation::Balance { user: accounts[from] },
            OperationKind::Hold => {
                let amount_minor = self.amount();
                Operation::Hold {
                    from: accounts[from],
                    to: accounts[to],
                    amount_minor,
                    settlement: self.settlement(amount_minor),
                }
            }
            OperationKind::Batch => {
                let mut legs = Vec::with_capacity(self.config.batch_legs);
                let mut pair = (from, to);
                for leg in 0..self.config.batch_legs {
                    if leg > 0 {
                        pair = self.pair();
                    }
                    legs.push(BatchLeg {
                        from: accounts[pair.0],
                        to: accounts[pair.1],
                        amount_minor: self.amount(),
                    });
                }
                Operation::Batch { legs }
            }
        }
    }
}

/// How often a Zipf target is redrawn when it equals the source before falling back to
/// a uniform target: enough for any useful exponent, and a bound on the loop.
const ZIPF_REDRAWS_MAX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: usize, shape: Shape) -> WorkloadConfig {
        WorkloadConfig {
            accounts: Arc::new((1..=count as i64).map(|id| id * 10).collect()),
            shape,
            mix: Mix::default(),
            amount_min_minor: 1,
            amount_max_minor: 1000,
            batch_legs: 4,
            hold_mix: HoldMix::default(),
        }
    }

    /// How often each index is a source and a target over `draws` pairs.
    fn counts(shape: Shape, count: usize, draws: usize) -> (Vec<usize>, Vec<usize>) {
        let mut workload = Workload::new(config(count, shape), 7);
        let (mut sources, mut targets) = (vec![0; count], vec![0; count]);
        for _ in 0..draws {
            let (from, to) = workload.pair();
            assert_ne!(from, to, "{shape}: a transfer never goes to its own source");
            sources[from] += 1;
            targets[to] += 1;
        }
        (sources, targets)
    }

    #[test]
    fn uniform_spreads_evenly_over_every_account() {
        let (sources, targets) = counts(Shape::Uniform, 10, 100_000);
        for (index, (&source, &target)) in sources.iter().zip(&targets).enumerate() {
            // Expected 10,000 each; 5 % is over ten standard deviations.
            assert!((9_500..10_500).contains(&source), "source {index}: {source}");
            assert!((9_500..10_500).contains(&target), "target {index}: {target}");
        }
    }

    #[test]
    fn zipf_makes_low_ranks_popular_in_proportion_to_the_exponent() {
        let (sources, _) = counts(Shape::Zipf { exponent: 1.0 }, 1000, 200_000);
        // With s = 1, rank 1 is drawn twice as often as rank 2 and ten times as often as
        // rank 10.
        let ratio_2 = sources[0] as f64 / sources[1] as f64;
        let ratio_10 = sources[0] as f64 / sources[9] as f64;
        assert!((1.8..2.2).contains(&ratio_2), "rank 1 / rank 2 = {ratio_2}");
        assert!((8.0..12.5).contains(&ratio_10), "rank 1 / rank 10 = {ratio_10}");
        // The first 1 % of accounts carry a large share (H(10)/H(1000) ≈ 39 %).
        let head: usize = sources[..10].iter().sum();
        assert!((0.35..0.43).contains(&(head as f64 / 200_000.0)), "head share {head}");
    }

    #[test]
    fn a_higher_zipf_exponent_is_more_skewed() {
        let (mild, _) = counts(Shape::Zipf { exponent: 0.5 }, 1000, 50_000);
        let (steep, _) = counts(Shape::Zipf { exponent: 1.5 }, 1000, 50_000);
        assert!(steep[0] > 3 * mild[0], "steep {} vs mild {}", steep[0], mild[0]);
    }

    #[test]
    fn hot_source_always_debits_the_first_account() {
        let (sources, targets) = counts(Shape::HotSource, 50, 10_000);
        assert_eq!(sources[0], 10_000);
        assert_eq!(targets[0], 0);
        assert!(
            targets[1..].iter().all(|&count| count > 100),
            "targets spread: {targets:?}"
        );
    }

    #[test]
    fn hot_target_always_credits_the_first_account() {
        let (sources, targets) = counts(Shape::HotTarget, 50, 10_000);
        assert_eq!(targets[0], 10_000);
        assert_eq!(sources[0], 0);
    }

    #[test]
    fn hot_pair_moves_money_both_ways_between_two_accounts() {
        let (sources, targets) = counts(Shape::HotPair, 50, 10_000);
        assert_eq!(sources[0] + sources[1], 10_000);
        assert!(
            (4_500..5_500).contains(&sources[0]),
            "direction is random: {}",
            sources[0]
        );
        assert_eq!(targets[0], sources[1]);
    }

    #[test]
    fn hot_set_stays_within_its_accounts_and_covers_them() {
        let (sources, targets) = counts(Shape::HotSet { accounts: 10 }, 1000, 50_000);
        assert!(sources[10..].iter().chain(&targets[10..]).all(|&count| count == 0));
        assert!(
            sources[..10].iter().all(|&count| (4_500..5_500).contains(&count)),
            "{sources:?}"
        );
    }

    #[test]
    fn the_mix_is_followed_and_accounts_are_user_ids() {
        let mut config = config(100, Shape::Uniform);
        config.mix = "transfer=50,credit=10,debit=10,history=20,balance=10".parse().unwrap();
        let mut workload = Workload::new(config, 3);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..100_000 {
            let operation = workload.next_operation();
            *seen.entry(operation.kind()).or_insert(0) += 1;
            if let Operation::Transfer { from, to, amount_minor } = operation {
                assert!(from % 10 == 0 && to % 10 == 0 && from != to);
                assert!((1..=1000).contains(&amount_minor));
            }
        }
        let share = |kind| seen[&kind] as f64 / 100_000.0;
        assert!((0.49..0.51).contains(&share(OperationKind::Transfer)));
        assert!((0.19..0.21).contains(&share(OperationKind::History)));
        assert!((0.09..0.11).contains(&share(OperationKind::Credit)));
    }

    #[test]
    fn holds_are_settled_in_the_proportions_of_the_hold_mix() {
        let mut config = config(100, Shape::Uniform);
        config.mix = "hold=100".parse().unwrap();
        let mut workload = Workload::new(config, 5);
        let (mut posts, mut partials, mut voids) = (0, 0, 0);
        for _ in 0..50_000 {
            let Operation::Hold {
                from,
                to,
                amount_minor,
                settlement,
            } = workload.next_operation()
            else {
                panic!("only holds in this mix");
            };
            assert!(from % 10 == 0 && to % 10 == 0 && from != to, "{from}→{to}");
            assert!((1..=1000).contains(&amount_minor));
            match settlement {
                HoldSettlement::Post => posts += 1,
                HoldSettlement::PostPartial { amount_minor: captured } => {
                    partials += 1;
                    assert!(
                        (1..amount_minor).contains(&captured),
                        "a partial post captures less than held: {captured} of {amount_minor}"
                    );
                }
                HoldSettlement::Void => voids += 1,
            }
        }
        // 60/20/20 by default; one cent holds (1 in 1000) post whole instead of in part.
        let share = |count: i32| f64::from(count) / 50_000.0;
        assert!((0.59..0.61).contains(&share(posts)), "posts {posts}");
        assert!((0.19..0.21).contains(&share(partials)), "partials {partials}");
        assert!((0.19..0.21).contains(&share(voids)), "voids {voids}");
    }

    #[test]
    fn a_partial_post_of_a_one_cent_hold_posts_it_whole() {
        let mut config = config(10, Shape::Uniform);
        config.hold_mix = "partial=100".parse().unwrap();
        let mut workload = Workload::new(config, 1);
        assert_eq!(workload.settlement(1), HoldSettlement::Post);
        assert!(matches!(
            workload.settlement(2),
            HoldSettlement::PostPartial { amount_minor: 1 }
        ));
    }

    #[test]
    fn settlements_say_what_the_source_pays() {
        assert_eq!(HoldSettlement::Post.captured_minor(500), 500);
        assert_eq!(
            HoldSettlement::PostPartial { amount_minor: 120 }.captured_minor(500),
            120
        );
        assert_eq!(HoldSettlement::Void.captured_minor(500), 0);
    }

    #[test]
    fn a_batch_has_the_configured_legs_each_chosen_by_the_shape() {
        let mut config = config(100, Shape::HotPair);
        config.mix = "batch=100".parse().unwrap();
        config.batch_legs = 7;
        let mut workload = Workload::new(config, 9);
        let mut directions = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let Operation::Batch { legs } = workload.next_operation() else {
                panic!("only batches in this mix");
            };
            assert_eq!(legs.len(), 7);
            for leg in legs {
                // Hot pair: every leg between the first two accounts (ids 10 and 20).
                assert!(matches!((leg.from, leg.to), (10, 20) | (20, 10)), "{leg:?}");
                assert!((1..=1000).contains(&leg.amount_minor));
                directions.insert((leg.from, leg.to));
            }
        }
        assert_eq!(directions.len(), 2, "legs are drawn one by one, not copied");
    }

    #[test]
    fn holds_and_batches_take_their_share_of_a_mixed_load() {
        let mut config = config(100, Shape::Uniform);
        config.mix = "transfer=40,hold=30,batch=20,balance=10".parse().unwrap();
        let mut workload = Workload::new(config, 11);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..100_000 {
            *seen.entry(workload.next_operation().kind()).or_insert(0) += 1;
        }
        let share = |kind| f64::from(seen[&kind]) / 100_000.0;
        assert!((0.29..0.31).contains(&share(OperationKind::Hold)));
        assert!((0.19..0.21).contains(&share(OperationKind::Batch)));
        assert!(OperationKind::Hold.is_write() && OperationKind::Batch.is_write());
        assert!(!seen.contains_key(&OperationKind::Credit));
    }

    #[test]
    fn hold_mixes_that_do_not_add_up_are_refused_with_a_reason() {
        let cases = [
            ("post=60,void=20", "add up to 80"),
            ("post=60,partial=20,refund=20", "unknown settlement"),
            ("post", "name=percent"),
            ("post=-1", "whole percentage"),
        ];
        for (text, reason) in cases {
            let error = text.parse::<HoldMix>().unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert_eq!(
            "post=60,partial=20,void=20".parse::<HoldMix>().unwrap(),
            HoldMix::default()
        );
        assert_eq!(
            "void=100".parse::<HoldMix>().unwrap(),
            HoldMix {
                post_percent: 0,
                partial_percent: 0,
                void_percent: 100
            }
        );
    }

    #[test]
    fn mixes_that_do_not_add_up_are_refused_with_a_reason() {
        let cases = [
            ("transfer=90", "add up to 90"),
            ("transfer=90,refund=10", "unknown operation"),
            ("transfer=50,hold=40", "add up to 90"),
            ("transfer", "name=percent"),
            ("transfer=x", "whole percentage"),
        ];
        for (text, reason) in cases {
            let error = text.parse::<Mix>().unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert_eq!("transfer=100".parse::<Mix>().unwrap(), Mix::default());
        let mix = "hold=60,batch=40".parse::<Mix>().unwrap();
        assert_eq!((mix.hold_percent, mix.batch_percent, mix.transfer_percent), (60, 40, 0));
    }

    #[test]
    fn amounts_parse_exactly_and_render_back() {
        assert_eq!(parse_minor("12.34"), Ok(1234));
        assert_eq!(parse_minor("12.3"), Ok(1230));
        assert_eq!(parse_minor("7"), Ok(700));
        assert_eq!(parse_minor("0.01"), Ok(1));
        assert_eq!(parse_signed_minor("-0.05"), Ok(-5));
        for bad in ["", "1.234", "-1", "1e3", ".5", "1.x"] {
            assert!(parse_minor(bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(format_minor(1234), "12.34");
        assert_eq!(format_minor(-5), "-0.05");
        assert_eq!(format_minor(100_000_00), "100000.00");
    }

    #[test]
    fn workloads_that_cannot_work_are_refused() {
        let mut bad = config(1, Shape::Uniform);
        assert!(bad.validate().unwrap_err().contains("at least 2"));
        bad = config(5, Shape::HotSet { accounts: 6 });
        assert!(bad.validate().unwrap_err().contains("hot set"));
        bad = config(5, Shape::Zipf { exponent: 0.0 });
        assert!(bad.validate().unwrap_err().contains("Zipf"));
        bad = config(5, Shape::Uniform);
        bad.amount_min_minor = 0;
        assert!(bad.validate().unwrap_err().contains("amount range"));
        for legs in [0, BATCH_LEGS_MAX + 1] {
            bad = config(5, Shape::Uniform);
            bad.batch_legs = legs;
            assert!(bad.validate().unwrap_err().contains("1 to 100 legs"), "{legs} legs");
        }
    }
}
