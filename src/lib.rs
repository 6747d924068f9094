//! gpuctl: run one bounded LLM experiment on rented compute and prove that it stopped.
//!
//! The binary is a thin shell over this library (see ARCHITECTURE.md): `cli` parses,
//! `commands` runs one subcommand each, and the concerns live in their own modules.

pub mod audit;
pub mod cli;
pub mod colab;
pub mod commands;
pub mod daemon;
pub mod diagnostics;
/// The session store (its own crate: SQLite by default, PostgreSQL for a team).
pub use gpuctl_store as db;
pub mod eval;
pub mod evidence;
pub mod exit;
pub mod home;
pub mod notify;
pub mod output;
pub mod plan;
pub mod policy;
pub mod procs;
pub mod progress;
pub mod report;
pub mod session;
pub mod settings;
pub mod ssh;
