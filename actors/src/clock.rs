//! Where the engine reads the time. Production uses the system clock; tests use a
//! [`ManualClock`] they move by hand, so idle timeouts and timestamps are exact.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, DurationRound, SubsecRound, TimeDelta, Utc};

/// A source of timestamps, in whole microseconds: the precision both stores keep, so
/// a record reads back exactly as it was written.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let start = start
            .duration_trunc(TimeDelta::microseconds(1))
            .expect("a start time within chrono's range");
        ManualClock { now: Mutex::new(start) }
    }

    pub fn advance(&self, by: std::time::Duration) {
        let micros = i64::try_from(by.as_micros()).expect("a test advances the clock by a sane amount");
        let by = TimeDelta::microseconds(micros);
        let mut now = self.now.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock")
    }
}
