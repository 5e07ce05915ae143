//! Rebuild when a migration is added: `sqlx::migrate!` embeds the files it finds at
//! compile time, and Cargo would otherwise not notice a new file in the directory.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
