//! `sqlx::migrate!` embeds `../migrations` at compile time, and cargo does
//! not know that directory is an input: without this, a change to the
//! migrations alone (a new file, the re-asserted overrides) left the old
//! set compiled in until some source file of the crate changed.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
