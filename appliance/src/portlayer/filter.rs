//! The filterspec: the one filter language shared by every port-layer
//! component (`List`, `Events`, policy filters).
//!
//! Owns parsing, printing, field checking and matching of filters. It knows
//! nothing about containers, volumes or networks: elements are seen only
//! through the [`Filterable`] trait, and each component declares its own
//! field names. Must not touch storage, backends or any I/O.
//!
//! # Grammar
//!
//! A filter is a comma-separated list of terms; an element matches when it
//! matches every term. The empty string is the empty filter (matches all).
//! Whitespace around terms, keys, operators and alternatives is ignored;
//! quote a value to keep it.
//!
//! | term | meaning |
//! | --- | --- |
//! | `key=value` | the value equals `value` |
//! | `key!=value` | the value is missing or differs from `value` |
//! | `key=a\|b\|c` | equals any of the alternatives (also with `!=`: none of them) |
//! | `key=prefix*` | starts with `prefix` (a `*` is allowed only at the end) |
//! | `key=` | equals the empty string |
//! | `key` | present: the label exists / the field is non-empty |
//! | `!key` | absent |
//!
//! Keys: `label.<name>` addresses the label `<name>`; `system.<name>`
//! addresses the runtime's system tags, stored as labels named
//! `system.<name>` (so `system.hidden` and `label.system.hidden` are the
//! same key); anything else is a field the element exposes (`id`, `name`,
//! `state`, ...). Keys may not contain whitespace or any of `,|"*!=`.
//!
//! An alternative may be double-quoted to hold `,`, `|`, `*`, `"` or
//! surrounding spaces: `label.note="a,b"`. Inside quotes `\"` is a quote and
//! `\\` a backslash; a `*` after the closing quote still means prefix.
//!
//! A missing value (label not set, field unknown to the element) never
//! equals anything, so `key!=value` matches it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The system tag that marks infrastructure elements, hidden by default.
pub const HIDDEN_LABEL: &str = "system.hidden";

const LABEL_PREFIX: &str = "label.";
const SYSTEM_PREFIX: &str = "system.";
const KEY_FORBIDDEN: &[char] = &[',', '|', '"', '*', '!', '='];

/// What a filter can look at on an element.
pub trait Filterable {
    /// The value of a field the element exposes (`id`, `name`, `state`, ...);
    /// `None` when the element has no such field or it is unset.
    fn field(&self, name: &str) -> Option<String>;

    /// All values of a field that can hold several (an image's names, the
    /// volumes a container uses): `key=value` matches when any of them
    /// does, `key!=value` when none does. Defaults to the one `field`.
    fn values(&self, name: &str) -> Vec<String> {
        self.field(name).into_iter().collect()
    }

    /// The value of a label, looked up by its full key: `app` for
    /// `label.app`, `system.hidden` for `system.hidden`.
    fn label(&self, key: &str) -> Option<&str>;
}

/// Where in a filter a term sits: its 1-based position and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermAt {
    pub index: usize,
    pub text: String,
}

impl fmt::Display for TermAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Term {} ({:?})", self.index, self.text)
    }
}

/// Why a filter could not be parsed or does not fit an element type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{at}: empty term; remove the extra ','")]
    EmptyTerm { at: TermAt },
    #[error("{at}: empty key")]
    EmptyKey { at: TermAt },
    #[error("{at}: key {key:?} may not contain {ch:?}")]
    InvalidKey { at: TermAt, key: String, ch: char },
    #[error("{at}: empty label name after {prefix:?}")]
    EmptyLabelName { at: TermAt, prefix: &'static str },
    #[error("{at}: '!' only negates presence; use {suggestion}")]
    NegatedComparison { at: TermAt, suggestion: String },
    #[error("{at}: unterminated quote")]
    UnterminatedQuote { at: TermAt },
    #[error("{at}: a quote must enclose a whole alternative")]
    StrayQuote { at: TermAt },
    #[error("{at}: unknown escape '\\{escape}' inside quotes; only \\\" and \\\\ are allowed")]
    BadEscape { at: TermAt, escape: char },
    #[error("{at}: '*' is allowed only at the end of a value")]
    MisplacedStar { at: TermAt },
    #[error("{at}: empty alternative; quote it (\"\") to match the empty string")]
    EmptyAlternative { at: TermAt },
    #[error("{at}: unknown field {key:?}; known fields: {known}, or use label.{key}", known = list_or_none(known))]
    UnknownField {
        at: TermAt,
        key: String,
        known: Vec<String>,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// What a term looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A field the element exposes.
    Field(String),
    /// A label by its full key (`app`, or `system.hidden` for system tags).
    Label(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Field(name) => f.write_str(name),
            Key::Label(key) if key.starts_with(SYSTEM_PREFIX) => f.write_str(key),
            Key::Label(key) => write!(f, "{LABEL_PREFIX}{key}"),
        }
    }
}

/// One alternative of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(want) => value == want,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }

    fn text(&self) -> &str {
        match self {
            Pattern::Exact(s) | Pattern::Prefix(s) => s,
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, alone: bool) -> fmt::Result {
        let text = self.text();
        let quote = (text.is_empty() && !alone)
            || text.starts_with(char::is_whitespace)
            || text.ends_with(char::is_whitespace)
            || text.contains([',', '|', '"', '*', '\\']);
        if quote {
            f.write_str("\"")?;
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(text)?;
        }
        if matches!(self, Pattern::Prefix(_)) {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// What a term requires of its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `key`: the label exists / the field is non-empty.
    Present,
    /// `!key`.
    Absent,
    /// `key=a|b`: the value matches one of the alternatives (never empty).
    Equals(Vec<Pattern>),
    /// `key!=a|b`: the value is missing or matches none of the alternatives.
    NotEquals(Vec<Pattern>),
}

/// One comma-separated term of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    key: Key,
    condition: Condition,
}

impl Term {
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// Whether `element` satisfies this term.
    pub fn matches(&self, element: &dyn Filterable) -> bool {
        let values: Vec<std::borrow::Cow<'_, str>> = match &self.key {
            Key::Field(name) => element.values(name).into_iter().map(Into::into).collect(),
            Key::Label(key) => element.label(key).map(Into::into).into_iter().collect(),
        };
        let any = |alts: &[Pattern]| values.iter().any(|v| alts.iter().any(|p| p.matches(v)));
        let present = match &self.key {
            Key::Field(_) => values.iter().any(|v| !v.is_empty()),
            Key::Label(_) => !values.is_empty(),
        };
        match &self.condition {
            Condition::Present => present,
            Condition::Absent => !present,
            Condition::Equals(alts) => any(alts),
            Condition::NotEquals(alts) => !any(alts),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, alts) = match &self.condition {
            Condition::Present => return write!(f, "{}", self.key),
            Condition::Absent => return write!(f, "!{}", self.key),
            Condition::Equals(alts) => ("=", alts),
            Condition::NotEquals(alts) => ("!=", alts),
        };
        write!(f, "{}{op}", self.key)?;
        let alone = alts.len() == 1;
        for (i, alt) in alts.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            alt.write(f, alone)?;
        }
        Ok(())
    }
}

/// A parsed filterspec: all terms must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Filter {
    terms: Vec<Term>,
}

impl Filter {
    /// Parses a filterspec; `""` is the empty filter, which matches all.
    pub fn parse(spec: &str) -> Result<Filter, FilterError> {
        if spec.trim().is_empty() {
            return Ok(Filter::default());
        }
        let terms = split_terms(spec)?
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let at = TermAt {
                    index: i + 1,
                    text: raw.text.trim().to_owned(),
                };
                if raw.unterminated {
                    return Err(FilterError::UnterminatedQuote { at });
                }
                parse_term(at)
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { terms })
    }

    /// The default view of a component: hides infrastructure elements.
    pub fn default_view() -> Filter {
        Filter::default().with_default_visibility()
    }

    /// Adds `!system.hidden` unless some term already says something about
    /// `system.hidden` (then the caller has chosen what to see).
    pub fn with_default_visibility(mut self) -> Filter {
        if !self.mentions_label(HIDDEN_LABEL) {
            self.terms.push(Term {
                key: Key::Label(HIDDEN_LABEL.to_owned()),
                condition: Condition::Absent,
            });
        }
        self
    }

    /// Both filters' terms: matches what both match.
    pub fn and(mut self, other: Filter) -> Filter {
        self.terms.extend(other.terms);
        self
    }

    /// Whether any term looks at the label with this full key.
    pub fn mentions_label(&self, key: &str) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(&t.key, Key::Label(k) if k == key))
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Checks every field key against the fields an element type declares;
    /// labels and system tags are always allowed.
    pub fn check_fields(&self, known: &[&str]) -> Result<(), FilterError> {
        for (i, term) in self.terms.iter().enumerate() {
            if let Key::Field(name) = &term.key
                && !known.contains(&name.as_str())
            {
                return Err(FilterError::UnknownField {
                    at: TermAt {
                        index: i + 1,
                        text: term.to_string(),
                    },
                    key: name.clone(),
                    known: known.iter().map(|k| (*k).to_owned()).collect(),
                });
            }
        }
        Ok(())
    }

    /// Whether `element` satisfies every term.
    pub fn matches(&self, element: &dyn Filterable) -> bool {
        self.terms.iter().all(|t| t.matches(element))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{term}")?;
        }
        Ok(())
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(s)
    }
}

impl TryFrom<String> for Filter {
    type Error = FilterError;

    fn try_from(s: String) -> Result<Filter, FilterError> {
        Filter::parse(&s)
    }
}

impl From<Filter> for String {
    fn from(f: Filter) -> String {
        f.to_string()
    }
}

struct RawTerm<'a> {
    text: &'a str,
    unterminated: bool,
}

/// Splits at commas outside double quotes.
fn split_terms(spec: &str) -> Result<Vec<RawTerm<'_>>, FilterError> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in spec.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == ',' && !in_quotes {
            terms.push(RawTerm {
                text: &spec[start..i],
                unterminated: false,
            });
            start = i + 1;
        }
    }
    terms.push(RawTerm {
        text: &spec[start..],
        unterminated: in_quotes,
    });
    for (i, t) in terms.iter().enumerate() {
        if t.text.trim().is_empty() {
            let at = TermAt {
                index: i + 1,
                text: String::new(),
            };
            return Err(FilterError::EmptyTerm { at });
        }
    }
    Ok(terms)
}

fn parse_term(at: TermAt) -> Result<Term, FilterError> {
    let text = at.text.clone();
    if let Some(rest) = text.strip_prefix('!') {
        if let Some(eq) = rest.find('=') {
            let (key, value) = (&rest[..eq], &rest[eq + 1..]);
            let suggestion = match key.strip_suffix('!') {
                Some(key) => format!("{}={}", key.trim(), value.trim()),
                None => format!("{}!={}", key.trim(), value.trim()),
            };
            return Err(FilterError::NegatedComparison { at, suggestion });
        }
        let key = parse_key(&at, rest)?;
        return Ok(Term {
            key,
            condition: Condition::Absent,
        });
    }
    let Some(eq) = text.find('=') else {
        let key = parse_key(&at, &text)?;
        return Ok(Term {
            key,
            condition: Condition::Present,
        });
    };
    let (key, negated) = match text[..eq].trim_end().strip_suffix('!') {
        Some(key) => (key, true),
        None => (&text[..eq], false),
    };
    let key = parse_key(&at, key)?;
    let alts = parse_alternatives(&at, &text[eq + 1..])?;
    let condition = if negated {
        Condition::NotEquals(alts)
    } else {
        Condition::Equals(alts)
    };
    Ok(Term { key, condition })
}

fn parse_key(at: &TermAt, key: &str) -> Result<Key, FilterError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(FilterError::EmptyKey { at: at.clone() });
    }
    if let Some(ch) = key
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || KEY_FORBIDDEN.contains(c))
    {
        return Err(FilterError::InvalidKey {
            at: at.clone(),
            key: key.to_owned(),
            ch,
        });
    }
    let empty_name = |prefix| FilterError::EmptyLabelName {
        at: at.clone(),
        prefix,
    };
    if let Some(name) = key.strip_prefix(LABEL_PREFIX) {
        if name.is_empty() {
            return Err(empty_name(LABEL_PREFIX));
        }
        return Ok(Key::Label(name.to_owned()));
    }
    if key.starts_with(SYSTEM_PREFIX) {
        if key.len() == SYSTEM_PREFIX.len() {
            return Err(empty_name(SYSTEM_PREFIX));
        }
        return Ok(Key::Label(key.to_owned()));
    }
    Ok(Key::Field(key.to_owned()))
}

/// Parses `a|"b,c"|d*`; the result is never empty.
fn parse_alternatives(at: &TermAt, value: &str) -> Result<Vec<Pattern>, FilterError> {
    let err_at = || at.clone();
    let mut alts = Vec::new();
    let mut chars = value.chars().peekable();
    let mut bare_empty = false;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let alt = if chars.next_if_eq(&'"').is_some() {
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err(FilterError::UnterminatedQuote { at: err_at() }),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => text.push(c),
                        Some(escape) => {
                            return Err(FilterError::BadEscape {
                                at: err_at(),
                                escape,
                            });
                        }
                        None => return Err(FilterError::UnterminatedQuote { at: err_at() }),
                    },
                    Some(c) => text.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let prefix = chars.next_if_eq(&'*').is_some();
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.peek() {
                None | Some('|') => {}
                Some('*') => return Err(FilterError::MisplacedStar { at: err_at() }),
                Some(_) => return Err(FilterError::StrayQuote { at: err_at() }),
            }
            if prefix {
                Pattern::Prefix(text)
            } else {
                Pattern::Exact(text)
            }
        } else {
            let mut text = String::new();
            while let Some(c) = chars.next_if(|c| *c != '|') {
                text.push(c);
            }
            let text = text.trim_end();
            bare_empty |= text.is_empty();
            if text.contains('"') {
                return Err(FilterError::StrayQuote { at: err_at() });
            }
            match text.find('*') {
                None => Pattern::Exact(text.to_owned()),
                Some(star) if star + 1 == text.len() => Pattern::Prefix(text[..star].to_owned()),
                Some(_) => return Err(FilterError::MisplacedStar { at: err_at() }),
            }
        };
        alts.push(alt);
        if chars.next().is_none() {
            break;
        }
    }
    // Only an unquoted empty value on its own means "equals the empty
    // string"; among alternatives it is a typo (`a||b`) unless quoted.
    if alts.len() > 1 && bare_empty {
        return Err(FilterError::EmptyAlternative { at: err_at() });
    }
    Ok(alts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Elem {
        fields: BTreeMap<&'static str, &'static str>,
        labels: BTreeMap<&'static str, &'static str>,
    }

    impl Elem {
        fn new(
            fields: &[(&'static str, &'static str)],
            labels: &[(&'static str, &'static str)],
        ) -> Elem {
            Elem {
                fields: fields.iter().copied().collect(),
                labels: labels.iter().copied().collect(),
            }
        }
    }

    impl Filterable for Elem {
        fn field(&self, name: &str) -> Option<String> {
            self.fields.get(name).map(|v| (*v).to_owned())
        }

        fn label(&self, key: &str) -> Option<&str> {
            self.labels.get(key).copied()
        }
    }

    fn web() -> Elem {
        Elem::new(
            &[
                ("id", "c1"),
                ("name", "web1"),
                ("state", "running"),
                ("image", "busybox:latest"),
                ("note", ""),
            ],
            &[("app", "web"), ("note", "a,b"), ("empty", "")],
        )
    }

    fn hidden() -> Elem {
        Elem::new(
            &[("id", "c2"), ("name", "dns"), ("state", "running")],
            &[("system.hidden", "true")],
        )
    }

    fn term(spec: &str) -> Term {
        let f = Filter::parse(spec).expect(spec);
        assert_eq!(f.terms().len(), 1, "{spec}");
        f.terms()[0].clone()
    }

    fn exact(s: &str) -> Pattern {
        Pattern::Exact(s.to_owned())
    }

    fn err(spec: &str) -> String {
        Filter::parse(spec).expect_err(spec).to_string()
    }

    #[test]
    fn parses_every_form() {
        let t = term("state=running");
        assert_eq!(t.key(), &Key::Field("state".into()));
        assert_eq!(t.condition(), &Condition::Equals(vec![exact("running")]));

        let t = term("label.app!=web");
        assert_eq!(t.key(), &Key::Label("app".into()));
        assert_eq!(t.condition(), &Condition::NotEquals(vec![exact("web")]));

        let t = term("state=running|paused|stopped");
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![exact("running"), exact("paused"), exact("stopped")])
        );

        let t = term("name=web*");
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![Pattern::Prefix("web".into())])
        );

        let t = term("label.app");
        assert_eq!(t.condition(), &Condition::Present);

        let t = term("!system.hidden");
        assert_eq!(t.key(), &Key::Label("system.hidden".into()));
        assert_eq!(t.condition(), &Condition::Absent);

        let t = term("label.note=");
        assert_eq!(t.condition(), &Condition::Equals(vec![exact("")]));

        let t = term("name=*");
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![Pattern::Prefix(String::new())])
        );
    }

    #[test]
    fn label_system_prefix_is_the_same_key() {
        assert_eq!(term("label.system.hidden"), term("system.hidden"));
        assert_eq!(term("label.system.hidden").to_string(), "system.hidden");
    }

    #[test]
    fn whitespace_around_terms_keys_and_alternatives_is_ignored() {
        let f = Filter::parse("  state = running ,\tlabel.app ,  name = a | b  ").expect("parse");
        assert_eq!(f.to_string(), "state=running,label.app,name=a|b");
    }

    #[test]
    fn quoted_values() {
        let t = term(r#"label.note="a,b""#);
        assert_eq!(t.condition(), &Condition::Equals(vec![exact("a,b")]));

        let t = term(r#"label.note="x|y"|z"#);
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![exact("x|y"), exact("z")])
        );

        let t = term(r#"label.q="say \"hi\" \\ bye""#);
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![exact(r#"say "hi" \ bye"#)])
        );

        let t = term(r#"name="a*""#);
        assert_eq!(t.condition(), &Condition::Equals(vec![exact("a*")]));

        let t = term(r#"name="a,"*"#);
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![Pattern::Prefix("a,".into())])
        );

        let t = term(r#"name=" padded ""#);
        assert_eq!(t.condition(), &Condition::Equals(vec![exact(" padded ")]));

        let t = term(r#"name=a|"""#);
        assert_eq!(
            t.condition(),
            &Condition::Equals(vec![exact("a"), exact("")])
        );

        let f = Filter::parse(r#"label.note="a,b",state=running"#).expect("parse");
        assert_eq!(f.terms().len(), 2);
    }

    #[test]
    fn errors_name_the_term_and_its_position() {
        assert_eq!(
            err("state=running,!a=b"),
            r#"Term 2 ("!a=b"): '!' only negates presence; use a!=b"#
        );
        assert_eq!(
            err("!a!=b"),
            r#"Term 1 ("!a!=b"): '!' only negates presence; use a=b"#
        );
        assert_eq!(
            err("a,,b"),
            r#"Term 2 (""): empty term; remove the extra ','"#
        );
        assert_eq!(
            err("a,"),
            r#"Term 2 (""): empty term; remove the extra ','"#
        );
        assert_eq!(err("a, =b"), r#"Term 2 ("=b"): empty key"#);
        assert_eq!(err("!"), r#"Term 1 ("!"): empty key"#);
        assert_eq!(
            err("a b=c"),
            r#"Term 1 ("a b=c"): key "a b" may not contain ' '"#
        );
        assert_eq!(
            err("!!a"),
            r#"Term 1 ("!!a"): key "!a" may not contain '!'"#
        );
        assert_eq!(
            err("label.=x"),
            r#"Term 1 ("label.=x"): empty label name after "label.""#
        );
        assert_eq!(
            err("system."),
            r#"Term 1 ("system."): empty label name after "system.""#
        );
        assert_eq!(
            err(r#"x=1,a="b,c"#),
            r#"Term 2 ("a=\"b,c"): unterminated quote"#
        );
        assert_eq!(err(r#"a="b\"#), r#"Term 1 ("a=\"b\\"): unterminated quote"#);
        assert_eq!(
            err(r#"a=b"c""#),
            r#"Term 1 ("a=b\"c\""): a quote must enclose a whole alternative"#
        );
        assert_eq!(
            err(r#"a="b"c"#),
            r#"Term 1 ("a=\"b\"c"): a quote must enclose a whole alternative"#
        );
        assert!(err(r#"a="b\n""#).contains("unknown escape '\\n'"));
        assert_eq!(
            err("a=b*c"),
            r#"Term 1 ("a=b*c"): '*' is allowed only at the end of a value"#
        );
        assert_eq!(
            err("a=b**"),
            r#"Term 1 ("a=b**"): '*' is allowed only at the end of a value"#
        );
        assert_eq!(
            err(r#"a="b"**"#),
            r#"Term 1 ("a=\"b\"**"): '*' is allowed only at the end of a value"#
        );
        assert!(err("a=b||c").starts_with(r#"Term 1 ("a=b||c"): empty alternative"#));
        assert!(err("a=b|").contains("empty alternative"));
        assert!(err("a=|b").contains("empty alternative"));
    }

    #[test]
    fn empty_and_blank_specs_are_the_empty_filter() {
        for spec in ["", "   ", "\t"] {
            let f = Filter::parse(spec).expect("parse");
            assert!(f.is_empty());
            assert!(f.matches(&web()));
            assert!(f.matches(&hidden()));
            assert_eq!(f.to_string(), "");
        }
    }

    #[test]
    fn display_round_trips() {
        let specs = [
            "state=running",
            "state=running,label.app=web,!system.hidden",
            "label.app!=web|db",
            "name=web*",
            "name=*",
            "label.x=",
            "label.x",
            "id",
            r#"label.note="a,b""#,
            r#"label.q="say \"hi\" \\ bye"|plain|"pre|"*"#,
            r#"name=" padded ""#,
            r#"name="a*""#,
            r#"name=a|"""#,
            "image=busybox:latest",
            "label.eq=a=b",
            "label.bang=!x",
            "label.system.hidden=true",
            "  state = running , name = a | b* ",
        ];
        for spec in specs {
            let f = Filter::parse(spec).expect(spec);
            let shown = f.to_string();
            let again = Filter::parse(&shown).expect(&shown);
            assert_eq!(again, f, "{spec} -> {shown}");
            assert_eq!(again.to_string(), shown, "display is stable for {spec}");
        }
    }

    #[test]
    fn display_quotes_only_when_needed() {
        let f = Filter::parse(r#"name="plain",label.a="x,y""#).expect("parse");
        assert_eq!(f.to_string(), r#"name=plain,label.a="x,y""#);
    }

    #[test]
    fn default_visibility() {
        assert_eq!(Filter::default_view().to_string(), "!system.hidden");
        assert!(Filter::default_view().matches(&web()));
        assert!(!Filter::default_view().matches(&hidden()));

        let f = Filter::parse("state=running")
            .expect("parse")
            .with_default_visibility();
        assert_eq!(f.to_string(), "state=running,!system.hidden");

        // A filter that says anything about system.hidden is left alone.
        for spec in [
            "system.hidden",
            "system.hidden=true",
            "label.system.hidden!=x",
            "!system.hidden",
        ] {
            let f = Filter::parse(spec).expect(spec);
            assert_eq!(f.clone().with_default_visibility(), f, "{spec}");
        }
        let all_hidden = Filter::parse("system.hidden")
            .expect("parse")
            .with_default_visibility();
        assert!(all_hidden.matches(&hidden()));
        assert!(!all_hidden.matches(&web()));

        // Other system tags do not count as choosing visibility.
        let f = Filter::parse("system.infrastructure")
            .expect("parse")
            .with_default_visibility();
        assert_eq!(f.terms().len(), 2);
    }

    #[test]
    fn check_fields() {
        let known = ["id", "name", "state", "image"];
        let f = Filter::parse("state=running,label.colour=red,system.hidden,name").expect("parse");
        assert_eq!(f.check_fields(&known), Ok(()));

        let f = Filter::parse("state=running,colour=red").expect("parse");
        let e = f.check_fields(&known).expect_err("unknown field");
        assert_eq!(
            e.to_string(),
            r#"Term 2 ("colour=red"): unknown field "colour"; known fields: id, name, state, image, or use label.colour"#
        );
        match e {
            FilterError::UnknownField { at, key, known } => {
                assert_eq!(at.index, 2);
                assert_eq!(key, "colour");
                assert_eq!(known.len(), 4);
            }
            other => panic!("wrong error: {other:?}"),
        }
        let e = Filter::parse("id")
            .expect("parse")
            .check_fields(&[])
            .expect_err("no fields");
        assert!(e.to_string().contains("known fields: none"), "{e}");
    }

    #[test]
    fn matching() {
        let (w, h) = (web(), hidden());
        let m = |spec: &str, e: &Elem| Filter::parse(spec).expect(spec).matches(e);

        assert!(m("state=running", &w));
        assert!(!m("state=stopped", &w));
        assert!(m("state=stopped|running", &w));
        assert!(m("name=web*", &w));
        assert!(!m("name=db*", &w));
        assert!(m("image=busybox:*", &w));
        assert!(m("label.app=web", &w));
        assert!(!m("label.app=db", &w));
        assert!(m("label.app!=db", &w));
        assert!(!m("label.app!=db|web", &w));
        assert!(m(r#"label.note="a,b""#, &w));
        assert!(m("state=running,label.app=web,!system.hidden", &w));
        assert!(!m("state=running,label.app=web,!system.hidden", &h));
        assert!(m("system.hidden=true", &h));

        // Presence: a label exists even when empty; a field must be non-empty.
        assert!(m("label.empty", &w));
        assert!(m("label.empty=", &w));
        assert!(!m("!label.empty", &w));
        assert!(!m("note", &w));
        assert!(m("!note", &w));
        assert!(m("note=", &w));
        assert!(m("id", &w));
        assert!(!m("label.missing", &w));
        assert!(m("!label.missing", &w));

        // A missing value equals nothing, so != matches it.
        assert!(!m("label.missing=", &w));
        assert!(!m("label.missing=*", &w));
        assert!(m("label.missing!=x", &w));
        assert!(!m("colour=red", &w));
        assert!(m("colour!=red", &w));
        assert!(m("name=*", &w));
    }

    #[test]
    fn and_combines_terms() {
        let f = Filter::parse("state=running")
            .expect("parse")
            .and(Filter::parse("label.app=web").expect("parse"));
        assert_eq!(f.to_string(), "state=running,label.app=web");
        assert!(f.matches(&web()));
        assert!(!f.matches(&hidden()));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let f = Filter::parse(r#"state=running,label.note="a,b""#).expect("parse");
        let json = serde_json::to_string(&f).expect("serialize");
        assert_eq!(json, r#""state=running,label.note=\"a,b\"""#);
        let back: Filter = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, f);
        let bad = serde_json::from_str::<Filter>(r#""!a=b""#).expect_err("invalid");
        assert!(
            bad.to_string().contains("'!' only negates presence"),
            "{bad}"
        );
    }

    #[test]
    fn from_str_matches_parse() {
        let f: Filter = "state=running".parse().expect("parse");
        assert_eq!(f, Filter::parse("state=running").expect("parse"));
    }
}
