//! Bucket policies: AWS's JSON policy grammar, checked when a policy is put, and evaluated for
//! each request to the bucket.
//!
//! # Invariants
//! 1. A stored policy parses: `PutBucketPolicy` refuses (MalformedPolicy, with a message that
//!    names the element) invalid JSON, a policy over 20 KB, an unknown element, a `Version`
//!    other than 2012-10-17 or 2008-10-17, a statement without `Effect`, a principal, an action
//!    or a resource, an action no S3 action matches, a resource outside the bucket, an unknown
//!    condition operator or key, a condition value its operator cannot read, and `NotPrincipal`
//!    with `Allow` (everyone but someone, anonymous requests included).
//! 2. Evaluation as AWS documents it for a bucket policy: a matching `Deny` wins; else a
//!    matching `Allow` grants the request (the ACLs are not consulted); else the ACLs and the
//!    owner rules decide ([`Decision::NotApplicable`]).
//! 3. A statement applies when its principal, action, resource and every condition match. A
//!    condition whose key the request lacks is false, except for negated operators,
//!    `...IfExists`, `ForAllValues:` and `Null` ([`condition`]).
//! 4. Anonymous requests are matched only by `"*"` (or `{"AWS": "*"}`) and by `NotPrincipal`.
//! 5. The bucket owner may always read, change and delete the bucket's policy
//!    ([`owner_always_may`]): no policy locks its owner out.
//!
//! # Principals
//! Ferry's accounts are its configured credentials. A principal value names an account when it
//! is its canonical id or access key, `arn:aws:iam::<id or access key>:root`, or
//! `arn:aws:iam::<id, access key or nothing>:user/<id, access key or display name>`.
//! `Service` and `Federated` principals are accepted and match no request. A peer replicating
//! into the bucket acts for the source bucket's account: the account id,
//! `arn:aws:iam::<account>:root` and any `arn:aws:iam::<account>:role/<name>` (AWS's
//! replication role) name it.
//!
//! # Layout
//! This file: the grammar and the evaluation. [`actions`]: the S3 actions, and which one each
//! operation is. [`condition`]: operators, keys, comparisons.

mod actions;
mod condition;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use actions::{of_operation, owner_always_may};
use condition::Condition;
use serde_json::Value as Json;

/// The largest policy S3 accepts (20 KB).
pub const MAX_POLICY_BYTES: usize = 20 * 1024;

/// A parsed bucket policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq)]
struct Statement {
    effect: Effect,
    principal: Principal,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// `Principal` or `NotPrincipal`.
#[derive(Debug, Clone, PartialEq)]
struct Principal {
    not: bool,
    anyone: bool,
    /// Values of `AWS` and `CanonicalUser` (`Service` and `Federated` values, prefixed with
    /// their kind, never match an account).
    named: Vec<String>,
}

/// `Action` / `NotAction`, `Resource` / `NotResource`: wildcard patterns.
#[derive(Debug, Clone, PartialEq)]
struct Patterns {
    not: bool,
    patterns: Vec<String>,
}

/// What a policy says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A statement denies it: refused, whatever the ACLs say.
    Deny,
    /// A statement allows it and none denies it.
    Allow,
    /// No statement applies: the ACLs decide.
    NotApplicable,
}

/// The account making a request.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Canonical id.
    pub id: &'a str,
    pub access_key: &'a str,
    pub display_name: &'a str,
    /// A peer replicating for this account: the account's roles
    /// (`arn:aws:iam::<account>:role/<name>`) name it too.
    pub replication: bool,
}

/// A request as a policy sees it.
#[derive(Debug)]
pub struct Request<'a> {
    /// `s3:GetObject`, ...
    pub action: &'a str,
    /// `arn:aws:s3:::bucket` or `arn:aws:s3:::bucket/key`.
    pub resource: &'a str,
    /// `None`: anonymous.
    pub requester: Option<Requester<'a>>,
    pub context: &'a Context,
}

/// The request's condition keys and their values.
#[derive(Debug, Default)]
pub struct Context {
    values: HashMap<String, Vec<String>>,
}

impl Context {
    /// Adds a value of `key` (a key no policy may name is ignored).
    pub fn add(&mut self, key: &str, value: impl Into<String>) {
        if let Some(k) = condition::canonical_key(key) {
            self.values.entry(k).or_default().push(value.into());
        }
    }

    fn get(&self, canonical: &str) -> Option<&[String]> {
        self.values.get(canonical).map(Vec::as_slice)
    }
}

/// The ARN of a bucket, or of an object in it.
#[must_use]
pub fn resource_arn(bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("arn:aws:s3:::{bucket}/{k}"),
        None => format!("arn:aws:s3:::{bucket}"),
    }
}

impl Policy {
    /// Parses and checks a policy for `bucket`.
    ///
    /// # Errors
    /// What is wrong with it, as the message of a MalformedPolicy answer.
    pub fn parse(text: &str, bucket: &str) -> Result<Policy, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(format!("Policies must be no larger than {MAX_POLICY_BYTES} bytes"));
        }
        let doc: Json = serde_json::from_str(text).map_err(|e| format!("Policies must be valid JSON: {e}"))?;
        let Json::Object(top) = doc else { return Err("Policies must be a JSON object".into()) };
        let mut statements = None;
        for (name, value) in &top {
            match name.as_str() {
                "Version" => match value.as_str() {
                    Some("2012-10-17" | "2008-10-17") => {}
                    _ => return Err(format!("Invalid policy Version: {value}")),
                },
                "Id" if value.is_string() => {}
                "Statement" => statements = Some(value),
                other => return Err(format!("Unknown field {other}")),
            }
        }
        let list: Vec<&Json> = match statements {
            Some(Json::Array(items)) => items.iter().collect(),
            Some(one @ Json::Object(_)) => vec![one],
            Some(_) => return Err("Statement must be an object or a list of objects".into()),
            None => return Err("Missing required field Statement".into()),
        };
        if list.is_empty() {
            return Err("Statement must not be empty".into());
        }
        let statements = list.into_iter().map(|s| Statement::parse(s, bucket)).collect::<Result<Vec<_>, String>>()?;
        Ok(Policy { statements })
    }

    /// Refuses what [`Policy::parse`] reads but Ferry does not evaluate as S3 would: policy
    /// variables (`${aws:username}`) in a `2012-10-17` policy's resources and conditions, which
    /// would otherwise be matched as the literal text. Checked when a policy is put (a policy
    /// stored before keeps its meaning).
    ///
    /// # Errors
    /// The variable found, as the message of a MalformedPolicy answer.
    pub fn check_supported(text: &str) -> Result<(), String> {
        let Ok(Json::Object(top)) = serde_json::from_str::<Json>(text) else { return Ok(()) };
        if top.get("Version").and_then(Json::as_str) != Some("2012-10-17") {
            return Ok(());
        }
        let statements = match top.get("Statement") {
            Some(Json::Array(items)) => items.iter().collect(),
            Some(one) => vec![one],
            None => Vec::new(),
        };
        for s in statements {
            for field in ["Resource", "NotResource", "Condition"] {
                if let Some(found) = s.get(field).and_then(variable_in) {
                    return Err(format!(
                        "Policy variables are not supported: {found} in {field} (Ferry would match it as written)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// What the policy says about `req`.
    #[must_use]
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let mut allowed = false;
        for s in self.statements.iter().filter(|s| s.applies(req)) {
            match s.effect {
                Effect::Deny => return Decision::Deny,
                Effect::Allow => allowed = true,
            }
        }
        if allowed { Decision::Allow } else { Decision::NotApplicable }
    }

    /// Whether the policy grants anything to everyone (anonymous requests included) without a
    /// condition that fixes where requests come from: GetBucketPolicyStatus, Block Public
    /// Access.
    #[must_use]
    pub fn is_public(&self) -> bool {
        self.statements
            .iter()
            .any(|s| s.effect == Effect::Allow && s.principal.anyone && !s.conditions.iter().any(Condition::fixes_the_source))
    }

    /// Whether a condition names a key starting with `prefix` (lowercase): the request's
    /// values of such keys are only looked up when a policy needs them.
    #[must_use]
    pub fn uses_key(&self, prefix: &str) -> bool {
        self.statements.iter().flat_map(|s| &s.conditions).any(|c| c.key.starts_with(prefix))
    }
}

impl Statement {
    fn parse(value: &Json, bucket: &str) -> Result<Statement, String> {
        let Json::Object(fields) = value else { return Err("Each Statement must be an object".into()) };
        let (mut effect, mut principal, mut actions, mut resources, mut conditions) = (None, None, None, None, Vec::new());
        for (name, v) in fields {
            match name.as_str() {
                "Sid" => {
                    v.as_str().ok_or("Sid must be a string")?;
                }
                "Effect" => {
                    effect = Some(match v.as_str() {
                        Some("Allow") => Effect::Allow,
                        Some("Deny") => Effect::Deny,
                        _ => return Err(format!("Invalid effect: {v}")),
                    });
                }
                "Principal" | "NotPrincipal" => {
                    if principal.is_some() {
                        return Err("A statement has either Principal or NotPrincipal".into());
                    }
                    principal = Some(Principal::parse(v, name == "NotPrincipal")?);
                }
                "Action" | "NotAction" => {
                    if actions.is_some() {
                        return Err("A statement has either Action or NotAction".into());
                    }
                    actions = Some(Patterns::parse(v, name == "NotAction", name, check_action)?);
                }
                "Resource" | "NotResource" => {
                    if resources.is_some() {
                        return Err("A statement has either Resource or NotResource".into());
                    }
                    resources = Some(Patterns::parse(v, name == "NotResource", name, |p| check_resource(p, bucket))?);
                }
                "Condition" => conditions = Condition::parse_block(v)?,
                other => return Err(format!("Unknown field {other}")),
            }
        }
        let effect = effect.ok_or("Missing required field Effect")?;
        let principal = principal.ok_or("Missing required field Principal")?;
        // An Allow to everyone but someone (anonymous requests included) is almost never what
        // was meant; S3-compatible stores refuse it, and AWS advises against it.
        if principal.not && effect == Effect::Allow {
            return Err("NotPrincipal is supported with \"Effect\": \"Deny\" only".into());
        }
        Ok(Statement {
            effect,
            principal,
            actions: actions.ok_or("Missing required field Action")?,
            resources: resources.ok_or("Missing required field Resource")?,
            conditions,
        })
    }

    fn applies(&self, req: &Request<'_>) -> bool {
        self.principal.matches(req.requester.as_ref())
            && self.actions.matches(&req.action.to_ascii_lowercase())
            && self.resources.matches(req.resource)
            && self.conditions.iter().all(|c| c.holds(req.context.get(&c.key)))
    }
}

impl Principal {
    fn parse(v: &Json, not: bool) -> Result<Principal, String> {
        let mut p = Principal { not, anyone: false, named: Vec::new() };
        match v {
            Json::String(s) if s == "*" => p.anyone = true,
            Json::Object(kinds) if !kinds.is_empty() => {
                for (kind, values) in kinds {
                    let values = strings(values).ok_or_else(|| format!("Invalid principal in policy: {kind}"))?;
                    for value in values {
                        match kind.as_str() {
                            "AWS" if value == "*" => p.anyone = true,
                            "AWS" | "CanonicalUser" if !value.is_empty() && !value.contains('*') => p.named.push(value),
                            "Service" | "Federated" if !value.is_empty() => p.named.push(format!("{kind}:{value}")),
                            _ => return Err(format!("Invalid principal in policy: {kind} {value}")),
                        }
                    }
                }
            }
            _ => return Err(format!("Invalid principal in policy: {v}")),
        }
        Ok(p)
    }

    fn matches(&self, requester: Option<&Requester<'_>>) -> bool {
        let named = self.anyone || requester.is_some_and(|r| self.named.iter().any(|n| names(n, r)));
        named != self.not
    }
}

/// Whether a principal value names the requester's account.
fn names(value: &str, r: &Requester<'_>) -> bool {
    if value == r.id || value == r.access_key {
        return true;
    }
    let Some((account, resource)) = value.strip_prefix("arn:aws:iam::").and_then(|rest| rest.split_once(':')) else {
        return false;
    };
    let account_is_theirs = account == r.id || (!r.access_key.is_empty() && account == r.access_key);
    if r.replication {
        return account_is_theirs && (resource == "root" || resource.starts_with("role/"));
    }
    match resource.strip_prefix("user/") {
        Some(name) => (account_is_theirs || account.is_empty()) && [r.id, r.access_key, r.display_name].contains(&name),
        None => resource == "root" && account_is_theirs,
    }
}

impl Patterns {
    fn parse(v: &Json, not: bool, name: &str, check: impl Fn(&str) -> Result<String, String>) -> Result<Patterns, String> {
        let values = strings(v).ok_or_else(|| format!("{name} must be a string or a list of strings"))?;
        if values.is_empty() {
            return Err(format!("{name} must not be empty"));
        }
        let patterns = values.iter().map(|p| check(p)).collect::<Result<Vec<_>, String>>()?;
        Ok(Patterns { not, patterns })
    }

    fn matches(&self, value: &str) -> bool {
        self.patterns.iter().any(|p| wildcard(p, value)) != self.not
    }
}

/// An action pattern, lowercase, once it matches some S3 action.
fn check_action(p: &str) -> Result<String, String> {
    if p == "*" {
        return Ok(p.to_owned());
    }
    let lower = p.to_ascii_lowercase();
    let known = lower
        .strip_prefix("s3:")
        .is_some_and(|name| !name.is_empty() && actions::ACTIONS.iter().any(|a| wildcard(name, &a.to_ascii_lowercase())));
    if known { Ok(lower) } else { Err(format!("Policy has invalid action: {p}")) }
}

/// A resource pattern, once it names the bucket or objects in it.
fn check_resource(p: &str, bucket: &str) -> Result<String, String> {
    if p == "*" {
        return Ok(p.to_owned());
    }
    let in_bucket = p.strip_prefix("arn:aws:s3:::").is_some_and(|rest| {
        let bucket_part = rest.split_once('/').map_or(rest, |(b, _)| b);
        wildcard(bucket_part, bucket)
    });
    if in_bucket { Ok(p.to_owned()) } else { Err(format!("Policy has invalid resource: {p}")) }
}

/// A string, or a list of strings.
fn strings(v: &Json) -> Option<Vec<String>> {
    match v {
        Json::String(s) => Some(vec![s.clone()]),
        Json::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// `*` matches any run of characters, `?` any one character; everything else itself.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has taken up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The first string in `value` that holds a policy variable (`${...}`).
fn variable_in(value: &Json) -> Option<&str> {
    match value {
        Json::String(s) if s.contains("${") => Some(s),
        Json::Array(items) => items.iter().find_map(variable_in),
        Json::Object(map) => map.values().find_map(variable_in),
        _ => None,
    }
}
