//! The controller's exit codes (DESIGN.md): scripts and CI read them.

/// 0 done; 1 failed (and stopped); 2 refused input; 4 stop not confirmed (may still bill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done = 0,
    Failed = 1,
    Refused = 2,
    StopUnconfirmed = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}
