//! One problem found in a plan: where, which field, what is wrong, why it matters, the fix.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

use super::source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The dotted path of the field, e.g. `stop.max_duration` or `access.ports[0].local`.
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    #[serde(skip)]
    pub span: Range<usize>,
}

impl Problem {
    pub fn error(field: impl Into<String>, span: Range<usize>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            file: String::new(),
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
            why: None,
            fix: None,
            span,
        }
    }

    pub fn warning(
        field: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(field, span, message)
        }
    }

    pub fn why(mut self, why: impl Into<String>) -> Self {
        self.why = Some(why.into());
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Fill in file, line and column from the span.
    pub fn locate(&mut self, source: &Source) {
        let (line, column) = source.line_column(self.span.start);
        self.file = source.name.clone();
        self.line = line;
        self.column = column;
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{label}: {}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )?;
        if let Some(why) = &self.why {
            write!(f, "\n  why: {why}")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}
