//! Reading a plan file: size cap, UTF-8, and byte offsets turned into line:column.

use std::path::Path;

use super::problem::Problem;

/// Plans are a page of TOML; anything this large is a mistake, not a plan.
pub const MAX_PLAN_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Source {
    /// How the file is named in messages (the path as given).
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// Read a plan file, refusing what cannot be a plan with a located problem.
    pub fn read(path: &Path) -> Result<Source, Box<Problem>> {
        let name = path.display().to_string();
        let located = |mut p: Problem, text: &str| {
            p.locate(&Source::new(name.clone(), text));
            Box::new(p)
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            located(
                Problem::error("file", 0..0, format!("cannot read the plan: {e}"))
                    .fix("check the path; `gpuctl plan new > gpu_plan.toml` writes a template"),
                "",
            )
        })?;
        if meta.len() > MAX_PLAN_BYTES as u64 {
            return Err(located(
                Problem::error(
                    "file",
                    0..0,
                    format!(
                        "the plan is {} bytes; plans are limited to {} bytes",
                        meta.len(),
                        MAX_PLAN_BYTES
                    ),
                )
                .why(
                    "a plan is a page of settings reviewed in git; a file this large is not a plan",
                )
                .fix("point gpuctl at the plan file itself"),
                "",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            located(
                Problem::error("file", 0..0, format!("cannot read the plan: {e}")),
                "",
            )
        })?;
        Source::from_bytes(name, bytes)
    }

    pub fn from_bytes(name: String, bytes: Vec<u8>) -> Result<Source, Box<Problem>> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Source::new(name, text)),
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
                let source = Source::new(name, prefix);
                let mut p = Problem::error(
                    "file",
                    valid..valid,
                    format!("the plan is not UTF-8 (invalid byte at offset {valid})"),
                )
                .why("TOML files must be UTF-8")
                .fix("re-save the file as UTF-8");
                p.locate(&source);
                Err(Box::new(p))
            }
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let s = Source::new("p", "a = 1\nbé = 2\n");
        assert_eq!(s.line_column(0), (1, 1));
        assert_eq!(s.line_column(6), (2, 1));
        assert_eq!(s.line_column(10), (2, 4));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let err = Source::from_bytes("p".into(), b"a = 1\nb = \"\xff\"".to_vec())
            .err()
            .map(|p| (p.line, p.column));
        assert_eq!(err, Some((2, 6)));
    }
}
