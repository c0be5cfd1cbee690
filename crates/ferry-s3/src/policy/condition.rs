//! A statement's `Condition` block: operators, keys, and how a request's values are compared.
//!
//! - Operators: `String*`, `Numeric*`, `Date*`, `Bool`, `BinaryEquals`, `IpAddress` /
//!   `NotIpAddress`, `Arn*`, `Null`; any but `Null` with the `IfExists` suffix, and with a
//!   `ForAnyValue:` or `ForAllValues:` prefix for keys with several values.
//! - Several values for a key: any may match. Several keys, or several operators: all must.
//! - A key the request does not have: false, except for the negated operators (`...Not...`,
//!   `NotIpAddress`: true), `...IfExists` (true), `ForAllValues:` (true) and `Null`.
//! - Key names are case-insensitive; the tag key in `s3:ExistingObjectTag/<key>` and
//!   `s3:RequestObjectTag/<key>` is not.

use std::net::IpAddr;

use super::wildcard;

/// One operator applied to one key: `{"StringLike": {"s3:prefix": ["home/*"]}}` is one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    op: Op,
    set: SetOp,
    if_exists: bool,
    /// The key, canonical ([`canonical_key`]).
    pub(super) key: String,
    values: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Single,
    AnyValue,
    AllValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    StringIgnoreCase,
    StringLike,
    Numeric,
    Date,
    Bool,
    Binary,
    Ip,
    Arn,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    kind: Kind,
    cmp: Cmp,
    /// `...Not...`: true when no value matches.
    negated: bool,
}

/// A policy value, parsed for its operator.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(f64),
    /// Microseconds since the epoch.
    Time(i128),
    Net(ipnet::IpNet),
}

const fn op(kind: Kind, cmp: Cmp, negated: bool) -> Op {
    Op { kind, cmp, negated }
}

/// The operators by name (lowercase).
fn operator(name: &str) -> Option<Op> {
    use Cmp::*;
    use Kind::*;
    Some(match name {
        "stringequals" => op(String, Eq, false),
        "stringnotequals" => op(String, Eq, true),
        "stringequalsignorecase" => op(StringIgnoreCase, Eq, false),
        "stringnotequalsignorecase" => op(StringIgnoreCase, Eq, true),
        "stringlike" => op(StringLike, Eq, false),
        "stringnotlike" => op(StringLike, Eq, true),
        "numericequals" => op(Numeric, Eq, false),
        "numericnotequals" => op(Numeric, Eq, true),
        "numericlessthan" => op(Numeric, Lt, false),
        "numericlessthanequals" => op(Numeric, Le, false),
        "numericgreaterthan" => op(Numeric, Gt, false),
        "numericgreaterthanequals" => op(Numeric, Ge, false),
        "dateequals" => op(Date, Eq, false),
        "datenotequals" => op(Date, Eq, true),
        "datelessthan" => op(Date, Lt, false),
        "datelessthanequals" => op(Date, Le, false),
        "dategreaterthan" => op(Date, Gt, false),
        "dategreaterthanequals" => op(Date, Ge, false),
        "bool" => op(Bool, Eq, false),
        "binaryequals" => op(Binary, Eq, false),
        "ipaddress" => op(Ip, Eq, false),
        "notipaddress" => op(Ip, Eq, true),
        "arnequals" | "arnlike" => op(Arn, Eq, false),
        "arnnotequals" | "arnnotlike" => op(Arn, Eq, true),
        "null" => op(Null, Eq, false),
        _ => return None,
    })
}

/// Condition keys whose name ends in a tag key (kept as written).
const TAG_KEY_PREFIXES: &[&str] = &["s3:existingobjecttag/", "s3:requestobjecttag/", "aws:requesttag/", "aws:resourcetag/"];

/// Condition keys a policy may name (lowercase). Ferry fills those it knows for each
/// request (see `Context`); the others are absent, as for a request they do not apply to.
const KEYS: &[&str] = &[
    "aws:currenttime",
    "aws:epochtime",
    "aws:multifactorauthage",
    "aws:multifactorauthpresent",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:principalorgid",
    "aws:principaltype",
    "aws:referer",
    "aws:requestedregion",
    "aws:securetransport",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceip",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:tokenissuetime",
    "aws:useragent",
    "aws:userid",
    "aws:username",
    "s3:authtype",
    "s3:delimiter",
    "s3:locationconstraint",
    "s3:max-keys",
    "s3:object-lock-legal-hold",
    "s3:object-lock-mode",
    "s3:object-lock-remaining-retention-days",
    "s3:object-lock-retain-until-date",
    "s3:prefix",
    "s3:requestobjecttagkeys",
    "s3:resourceaccount",
    "s3:signatureage",
    "s3:signatureversion",
    "s3:tlsversion",
    "s3:versionid",
    "s3:x-amz-acl",
    "s3:x-amz-content-sha256",
    "s3:x-amz-copy-source",
    "s3:x-amz-grant-full-control",
    "s3:x-amz-grant-read",
    "s3:x-amz-grant-read-acp",
    "s3:x-amz-grant-write",
    "s3:x-amz-grant-write-acp",
    "s3:x-amz-metadata-directive",
    "s3:x-amz-server-side-encryption",
    "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "s3:x-amz-server-side-encryption-customer-algorithm",
    "s3:x-amz-storage-class",
];

/// A key as compared: lowercase, but a tag key keeps its case. `None` for a key no policy may
/// name.
pub(super) fn canonical_key(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    for prefix in TAG_KEY_PREFIXES {
        if lower.starts_with(prefix) && key.len() > prefix.len() {
            return Some(format!("{prefix}{}", &key[prefix.len()..]));
        }
    }
    KEYS.contains(&lower.as_str()).then_some(lower)
}

/// A JSON value of a condition as text: strings, booleans and numbers are all accepted.
fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Condition {
    /// Parses `{"<operator>": {"<key>": <value or values>, ...}}` entries: one [`Condition`]
    /// per operator and key.
    pub(super) fn parse_block(block: &serde_json::Value) -> Result<Vec<Condition>, String> {
        let serde_json::Value::Object(ops) = block else {
            return Err("Condition must be an object of operators".into());
        };
        let mut out = Vec::new();
        for (name, keys) in ops {
            let (set, rest) = match name.split_once(':') {
                Some((prefix, rest)) if prefix.eq_ignore_ascii_case("ForAnyValue") => (SetOp::AnyValue, rest),
                Some((prefix, rest)) if prefix.eq_ignore_ascii_case("ForAllValues") => (SetOp::AllValues, rest),
                Some(_) => return Err(format!("Invalid Condition operator: {name}")),
                None => (SetOp::Single, name.as_str()),
            };
            let lower = rest.to_ascii_lowercase();
            let (base, if_exists) = match lower.strip_suffix("ifexists") {
                Some(base) => (base, true),
                None => (lower.as_str(), false),
            };
            let op = operator(base).filter(|o| !(if_exists && o.kind == Kind::Null));
            let Some(op) = op else { return Err(format!("Invalid Condition operator: {name}")) };
            let serde_json::Value::Object(keys) = keys else {
                return Err(format!("Condition operator {name} must map keys to values"));
            };
            for (key, values) in keys {
                let Some(canonical) = canonical_key(key) else {
                    return Err(format!("Policy has an invalid condition key: {key}"));
                };
                let raw: Vec<&serde_json::Value> = match values {
                    serde_json::Value::Array(vs) => vs.iter().collect(),
                    v => vec![v],
                };
                if raw.is_empty() {
                    return Err(format!("Condition {name} on {key} has no value"));
                }
                let values = raw
                    .into_iter()
                    .map(|v| {
                        let t = text(v).ok_or_else(|| format!("Condition {name} on {key}: a value must be a string"))?;
                        parse_value(op.kind, &t).ok_or_else(|| format!("Condition {name} on {key}: invalid value {t}"))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                out.push(Condition { op, set, if_exists, key: canonical, values });
            }
        }
        Ok(out)
    }

    /// Whether the request's values of the key (`None`: the request has no such key) satisfy
    /// this condition.
    pub(super) fn holds(&self, request: Option<&[String]>) -> bool {
        let request = request.filter(|r| !r.is_empty());
        if self.op.kind == Kind::Null {
            // `"Null": {"key": "true"}`: the key is absent.
            let absent = request.is_none();
            return self.values.iter().any(|v| matches!(v, Value::Text(t) if t.eq_ignore_ascii_case("true") == absent));
        }
        let Some(request) = request else {
            return match self.set {
                SetOp::AllValues => true,
                SetOp::AnyValue => false,
                SetOp::Single => self.op.negated || self.if_exists,
            };
        };
        // A request value matches when it matches any policy value (for a negated operator:
        // none).
        let matches = |r: &String| {
            let any = self.values.iter().any(|p| compare(self.op, r, p));
            any != self.op.negated
        };
        match self.set {
            SetOp::AllValues => request.iter().all(matches),
            SetOp::AnyValue => request.iter().any(matches),
            // One value per key in practice; several are ORed, as AWS does, and for a negated
            // operator none may match.
            SetOp::Single if self.op.negated => request.iter().all(matches),
            SetOp::Single => request.iter().any(matches),
        }
    }

    /// Whether this condition narrows who can use the statement to known sources (for
    /// "is this policy public"): a fixed source IP range, account, ARN, VPC or organization.
    pub(super) fn fixes_the_source(&self) -> bool {
        let fixing = matches!(
            self.key.as_str(),
            "aws:sourceip"
                | "aws:sourcearn"
                | "aws:sourcevpc"
                | "aws:sourcevpce"
                | "aws:sourceaccount"
                | "aws:principalorgid"
                | "aws:principalaccount"
                | "aws:principalarn"
                | "aws:userid"
                | "aws:username"
        );
        let wide = self.values.iter().any(|v| match v {
            Value::Net(net) => net.prefix_len() == 0,
            Value::Text(t) => t.contains('*'),
            _ => false,
        });
        fixing && !self.op.negated && !wide && !self.if_exists
    }
}

/// Parses a policy value for its operator's kind.
fn parse_value(kind: Kind, t: &str) -> Option<Value> {
    Some(match kind {
        Kind::Numeric => Value::Number(t.trim().parse().ok()?),
        Kind::Date => Value::Time(parse_time(t)?),
        Kind::Bool | Kind::Null => {
            if !(t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false")) {
                return None;
            }
            Value::Text(t.to_owned())
        }
        Kind::Ip => Value::Net(parse_net(t)?),
        Kind::String | Kind::StringIgnoreCase | Kind::StringLike | Kind::Binary | Kind::Arn => Value::Text(t.to_owned()),
    })
}

/// A CIDR block, or one address (a /32 or /128).
fn parse_net(t: &str) -> Option<ipnet::IpNet> {
    let t = t.trim();
    t.parse::<ipnet::IpNet>().ok().or_else(|| t.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// An ISO 8601 date-time (`2026-01-01T00:00:00Z`), a date (`2026-01-01`), or seconds since the
/// epoch; in microseconds.
pub(super) fn parse_time(t: &str) -> Option<i128> {
    let t = t.trim();
    if let Ok(secs) = t.parse::<i64>() {
        return Some(i128::from(secs) * 1_000_000);
    }
    let rfc = time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(t, &rfc) {
        return Some(at.unix_timestamp_nanos() / 1000);
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(t, &date).ok().map(|d| d.midnight().assume_utc().unix_timestamp_nanos() / 1000)
}

/// One request value against one policy value, for the positive form of `op`.
fn compare(op: Op, request: &str, policy: &Value) -> bool {
    match (op.kind, policy) {
        (Kind::Bool, Value::Text(p)) => request.eq_ignore_ascii_case(p),
        (Kind::String | Kind::Binary, Value::Text(p)) => request == p,
        (Kind::StringIgnoreCase, Value::Text(p)) => request.eq_ignore_ascii_case(p),
        (Kind::StringLike | Kind::Arn, Value::Text(p)) => wildcard(p, request),
        (Kind::Numeric, Value::Number(p)) => request.trim().parse::<f64>().is_ok_and(|r| ordered(op.cmp, r.partial_cmp(p))),
        (Kind::Date, Value::Time(p)) => parse_time(request).is_some_and(|r| ordered(op.cmp, Some(r.cmp(p)))),
        (Kind::Ip, Value::Net(net)) => request.trim().parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
        _ => false,
    }
}

fn ordered(cmp: Cmp, o: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    matches!(
        (cmp, o),
        (Cmp::Eq, Some(Equal))
            | (Cmp::Lt, Some(Less))
            | (Cmp::Le, Some(Less | Equal))
            | (Cmp::Gt, Some(Greater))
            | (Cmp::Ge, Some(Greater | Equal))
    )
}
