//! A typed reader over the spanned TOML tree that records every problem instead of
//! stopping at the first, as serde would: `plan check` must list them all at once.
//!
//! Each table view remembers which keys were asked for; whatever was not asked for is
//! an unknown field, reported with a did-you-mean against the asked keys.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::problem::Problem;

/// A value with the byte span it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sp<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// Problems found so far, and keys already reported as secrets (not reported again as unknown).
#[derive(Default)]
pub struct Ctx {
    pub problems: Vec<Problem>,
    pub secret_keys: HashSet<usize>,
}

impl Ctx {
    pub fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }
}

pub struct TableView<'a> {
    pub path: String,
    pub span: Range<usize>,
    table: Option<&'a DeTable<'a>>,
    asked: Vec<&'static str>,
}

fn kind_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a> TableView<'a> {
    pub fn new(path: impl Into<String>, span: Range<usize>, table: &'a DeTable<'a>) -> Self {
        TableView {
            path: path.into(),
            span,
            table: Some(table),
            asked: Vec::new(),
        }
    }

    /// A view of a table that is absent: every read finds nothing.
    pub fn missing(path: impl Into<String>, span: Range<usize>) -> Self {
        TableView {
            path: path.into(),
            span,
            table: None,
            asked: Vec::new(),
        }
    }

    pub fn is_present(&self) -> bool {
        self.table.is_some()
    }

    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Where to point when `key` is missing: the table's own header.
    pub fn missing_span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn raw(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'a>>> {
        self.asked.push(key);
        self.table?.get(key)
    }

    fn type_error(&self, cx: &mut Ctx, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        cx.push(
            Problem::error(
                self.field(key),
                v.span(),
                format!("must be {want}, found {}", kind_name(v.get_ref())),
            )
            .fix(format!("write `{key}` as {want}")),
        );
    }

    pub fn string(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Sp {
                value: s.to_string(),
                span: v.span(),
            }),
            _ => {
                self.type_error(cx, key, v, "a string");
                None
            }
        }
    }

    pub fn integer(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<i64>> {
        let v = self.raw(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<i64>().ok().or_else(|| {
                let digits = i.as_str().replace('_', "");
                let (radix, body) = match digits.get(..2) {
                    Some("0x") => (16, &digits[2..]),
                    Some("0o") => (8, &digits[2..]),
                    Some("0b") => (2, &digits[2..]),
                    _ => (10, digits.as_str()),
                };
                i64::from_str_radix(body, radix).ok()
            }),
            _ => {
                self.type_error(cx, key, v, "an integer");
                return None;
            }
        };
        match parsed {
            Some(value) => Some(Sp {
                value,
                span: v.span(),
            }),
            None => {
                cx.push(Problem::error(
                    self.field(key),
                    v.span(),
                    "is not an integer gpuctl can represent",
                ));
                None
            }
        }
    }

    /// A number: integer or float, as f64. NaN and infinities are refused here.
    pub fn number(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<f64>> {
        let v = self.raw(key)?;
        let text = match v.get_ref() {
            DeValue::Integer(i) => i.as_str().replace('_', ""),
            DeValue::Float(f) => f.as_str().replace('_', ""),
            _ => {
                self.type_error(cx, key, v, "a number");
                return None;
            }
        };
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Some(Sp {
                value,
                span: v.span(),
            }),
            _ => {
                cx.push(
                    Problem::error(self.field(key), v.span(), "must be a finite number")
                        .fix("write a plain decimal such as 1.10"),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp {
                value: *b,
                span: v.span(),
            }),
            _ => {
                self.type_error(cx, key, v, "true or false");
                None
            }
        }
    }

    /// An RFC 3339 time with an offset, written as a string or a bare TOML offset date-time.
    /// A local (naive) time is refused: on a machine in another zone it would mean another moment.
    pub fn datetime(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<DateTime<Utc>>> {
        let v = self.raw(key)?;
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Datetime(dt) => dt.to_string(),
            _ => {
                self.type_error(cx, key, v, "an RFC 3339 time with an offset");
                return None;
            }
        };
        match DateTime::<FixedOffset>::parse_from_rfc3339(text.trim()) {
            Ok(t) => Some(Sp {
                value: t.with_timezone(&Utc),
                span: v.span(),
            }),
            Err(_) => {
                let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f"))
                    .is_ok();
                let message = if naive {
                    "has no UTC offset: a local time means a different moment on every machine"
                } else {
                    "is not an RFC 3339 time"
                };
                cx.push(
                    Problem::error(self.field(key), v.span(), message)
                        .why("the deadline is enforced as an absolute UTC time by the agent, `up` and the daemon")
                        .fix(format!("write it with an offset, e.g. {key} = \"2026-11-25T20:00:00Z\" or \"2026-11-25T21:00:00+01:00\"")),
                );
                None
            }
        }
    }

    /// A humane duration such as "90m" or "2h".
    pub fn duration(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<Duration>> {
        let v = self.raw(key)?;
        let DeValue::String(s) = v.get_ref() else {
            self.type_error(cx, key, v, "a duration string such as \"90m\"");
            return None;
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(Sp {
                value: d,
                span: v.span(),
            }),
            Err(e) => {
                cx.push(
                    Problem::error(
                        self.field(key),
                        v.span(),
                        format!("is not a duration ({e})"),
                    )
                    .fix(format!(
                        "write it like {key} = \"90m\", \"2h\" or \"1h 30m\""
                    )),
                );
                None
            }
        }
    }

    pub fn string_array(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Sp<Vec<Sp<String>>>> {
        let v = self.raw(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(cx, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Sp {
                    value: s.to_string(),
                    span: item.span(),
                }),
                other => cx.push(Problem::error(
                    format!("{}[{i}]", self.field(key)),
                    item.span(),
                    format!("must be a string, found {}", kind_name(other)),
                )),
            }
        }
        Some(Sp {
            value: out,
            span: v.span(),
        })
    }

    /// A sub-table (header table or inline table). Absent gives a `missing` view.
    pub fn table(&mut self, cx: &mut Ctx, key: &'static str) -> TableView<'a> {
        let path = self.field(key);
        match self.raw(key) {
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => TableView::new(path, v.span(), t),
                _ => {
                    self.type_error(cx, key, v, "a table");
                    TableView::missing(path, v.span())
                }
            },
            None => TableView::missing(path, self.span.start..self.span.start),
        }
    }

    /// An array of tables (`[[eval.case]]` or an array of inline tables).
    pub fn tables(&mut self, cx: &mut Ctx, key: &'static str) -> Vec<TableView<'a>> {
        let path = self.field(key);
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(cx, key, v, "an array of tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => {
                    out.push(TableView::new(format!("{path}[{i}]"), item.span(), t))
                }
                other => cx.push(Problem::error(
                    format!("{path}[{i}]"),
                    item.span(),
                    format!("must be a table, found {}", kind_name(other)),
                )),
            }
        }
        out
    }

    /// Report every key that was never asked for, with the closest known key.
    pub fn finish(self, cx: &mut Ctx) {
        let Some(table) = self.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if self.asked.contains(&name) || cx.secret_keys.contains(&key.span().start) {
                continue;
            }
            let field = self.field(name);
            let mut problem = Problem::error(&field, key.span(), format!("unknown field `{name}`"))
                .why("plans are a contract shared in git: a misspelt field would silently do nothing");
            let suggestion = self
                .asked
                .iter()
                .map(|k| (strsim::jaro_winkler(name, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            problem = match suggestion {
                Some((_, k)) => problem.fix(format!("did you mean `{k}`?")),
                None => problem.fix(format!(
                    "remove it; the fields of [{}] are: {}",
                    if self.path.is_empty() {
                        "top level"
                    } else {
                        &self.path
                    },
                    self.asked.join(", ")
                )),
            };
            cx.push(problem);
        }
    }
}
