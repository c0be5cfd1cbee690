use super::*;

const ALICE: Requester<'static> = Requester { id: "aliceid", access_key: "AKALICE", display_name: "alice", replication: false };
const BOB: Requester<'static> = Requester { id: "bobid", access_key: "AKBOB", display_name: "bob", replication: false };
/// A peer replicating for bob's account.
const BOBS_REPLICAS: Requester<'static> = Requester { id: "bobid", access_key: "", display_name: "", replication: true };

fn policy(statements: &str) -> Policy {
    Policy::parse(&format!(r#"{{"Version": "2012-10-17", "Statement": {statements}}}"#), "b").unwrap()
}

fn refused(text: &str) -> String {
    Policy::parse(text, "b").expect_err("refused")
}

fn decide(p: &Policy, action: &str, key: Option<&str>, who: Option<Requester<'_>>, context: &Context) -> Decision {
    let resource = resource_arn("b", key);
    p.evaluate(&Request { action, resource: &resource, requester: who, context })
}

fn ctx(pairs: &[(&str, &str)]) -> Context {
    let mut c = Context::default();
    for (k, v) in pairs {
        c.add(k, *v);
    }
    c
}

#[test]
fn wildcards_match_runs_and_single_characters() {
    for (p, t, m) in [
        ("*", "", true),
        ("*", "anything", true),
        ("a*", "abc", true),
        ("a*c", "abbbc", true),
        ("a*c", "abcd", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("*/*.jpg", "x/y/z.jpg", true),
        ("home/*/private", "home/al/ice/private", true),
        ("h*o*e", "hoe", true),
        ("é?", "éé", true),
        ("abc", "abc", true),
        ("abc", "abd", false),
        ("", "", true),
        ("", "a", false),
    ] {
        assert_eq!(wildcard(p, t), m, "{p} ~ {t}");
    }
}

#[test]
fn malformed_policies_are_refused_with_what_is_wrong() {
    let cases = [
        ("not json", "valid JSON"),
        ("[]", "JSON object"),
        (r#"{"Version": "2012-10-17"}"#, "Missing required field Statement"),
        (r#"{"Version": "2019-01-01", "Statement": []}"#, "Version"),
        (r#"{"Statement": [], "Extra": 1}"#, "Unknown field Extra"),
        (r#"{"Statement": []}"#, "must not be empty"),
        (
            r#"{"Statement": [{"Principal": "*", "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "Effect",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "Principal",
        ),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}"#, "Action"),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}"#,
            "Resource",
        ),
        (
            r#"{"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "Invalid effect",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObjekt", "Resource": "*"}]}"#,
            "s3:GetObjekt",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "ec2:RunInstances", "Resource": "*"}]}"#,
            "invalid action",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:Frob*", "Resource": "*"}]}"#,
            "s3:Frob*",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other/*"}]}"#,
            "invalid resource",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "b/*"}]}"#,
            "invalid resource",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "nobody", "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "principal",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": {"Robot": "x"}, "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "Robot",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "NotPrincipal": "*", "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "either Principal",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"StringSorta": {"s3:prefix": "a"}}}]}"#,
            "StringSorta",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"StringEquals": {"s3:color": "a"}}}]}"#,
            "s3:color",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"NullIfExists": {"s3:prefix": "true"}}}]}"#,
            "NullIfExists",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"NumericLessThan": {"s3:max-keys": "ten"}}}]}"#,
            "ten",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "300.1.1.1/8"}}}]}"#,
            "300.1.1.1/8",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"DateLessThan": {"aws:CurrentTime": "yesterday"}}}]}"#,
            "yesterday",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "maybe"}}}]}"#,
            "maybe",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "NotPrincipal": {"AWS": "x"}, "Action": "s3:GetObject", "Resource": "*"}]}"#,
            "NotPrincipal",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Unknown": 1}]}"#,
            "Unknown field Unknown",
        ),
    ];
    for (text, names) in cases {
        let e = refused(text);
        assert!(e.contains(names), "{text}: {e}");
    }
    let big = format!(
        r#"{{"Statement": [{{"Sid": "{}", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}}]}}"#,
        "x".repeat(MAX_POLICY_BYTES)
    );
    assert!(refused(&big).contains("larger"));
}

#[test]
fn the_grammars_shortcuts_parse() {
    // One statement as an object; one value or a list; JSON booleans and numbers as values;
    // action names in any case; wildcards in actions and resources; no Version.
    let p = Policy::parse(
        r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": ["AKBOB"], "CanonicalUser": "x"}, "Action": ["S3:getobject", "s3:List*"],
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b*/*"],
            "Condition": {"Bool": {"aws:SecureTransport": true}, "NumericLessThanEquals": {"s3:max-keys": 100}}}}"#,
        "b",
    )
    .unwrap();
    let c = ctx(&[("aws:SecureTransport", "true"), ("s3:max-keys", "10")]);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), Some(BOB), &c), Decision::Allow);
    assert_eq!(decide(&p, "s3:ListBucket", None, Some(BOB), &c), Decision::Allow);
    assert_eq!(decide(&p, "s3:PutObject", Some("k"), Some(BOB), &c), Decision::NotApplicable);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), Some(ALICE), &c), Decision::NotApplicable);
    let over = ctx(&[("aws:SecureTransport", "true"), ("s3:max-keys", "1000")]);
    assert_eq!(decide(&p, "s3:ListBucket", None, Some(BOB), &over), Decision::NotApplicable);
}

#[test]
fn deny_wins_over_allow() {
    let p = policy(
        r#"[{"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::bobid:root"}, "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/*"}]"#,
    );
    let c = Context::default();
    assert_eq!(decide(&p, "s3:DeleteObject", Some("k"), Some(BOB), &c), Decision::Deny);
    assert_eq!(decide(&p, "s3:DeleteObject", Some("k"), Some(ALICE), &c), Decision::Allow);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), Some(BOB), &c), Decision::Allow);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), None, &c), Decision::Allow, "anonymous is in \"*\"");
    assert_eq!(
        decide(&p, "s3:ListBucket", None, None, &c),
        Decision::NotApplicable,
        "the bucket is not b/*"
    );
}

#[test]
fn principals_name_accounts_in_every_form() {
    for value in [
        "bobid",
        "AKBOB",
        "arn:aws:iam::bobid:root",
        "arn:aws:iam::AKBOB:root",
        "arn:aws:iam:::user/bob",
        "arn:aws:iam::bobid:user/AKBOB",
    ] {
        let p = policy(&format!(
            r#"{{"Effect": "Allow", "Principal": {{"AWS": "{value}"}}, "Action": "s3:GetObject", "Resource": "*"}}"#
        ));
        let c = Context::default();
        assert_eq!(decide(&p, "s3:GetObject", Some("k"), Some(BOB), &c), Decision::Allow, "{value}");
        assert_eq!(decide(&p, "s3:GetObject", Some("k"), Some(ALICE), &c), Decision::NotApplicable, "{value}");
        assert_eq!(decide(&p, "s3:GetObject", Some("k"), None, &c), Decision::NotApplicable, "{value}");
    }
    for value in ["arn:aws:iam::aliceid:user/bob", "arn:aws:iam:::root", "arn:aws:iam::bobid:role/bob"] {
        let p = policy(&format!(
            r#"{{"Effect": "Allow", "Principal": {{"AWS": "{value}"}}, "Action": "s3:GetObject", "Resource": "*"}}"#
        ));
        assert_eq!(
            decide(&p, "s3:GetObject", Some("k"), Some(BOB), &Context::default()),
            Decision::NotApplicable,
            "{value}"
        );
    }
    // A role of the account names its replication only; a user does not.
    let role = policy(
        r#"{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::bobid:role/replication"}, "Action": "s3:ReplicateObject", "Resource": "*"}"#,
    );
    assert_eq!(
        decide(&role, "s3:ReplicateObject", Some("k"), Some(BOBS_REPLICAS), &Context::default()),
        Decision::Allow
    );
    assert_eq!(
        decide(&role, "s3:ReplicateObject", Some("k"), Some(BOB), &Context::default()),
        Decision::NotApplicable
    );
    let user = policy(
        r#"{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam:::user/bob"}, "Action": "s3:ReplicateObject", "Resource": "*"}"#,
    );
    assert_eq!(
        decide(&user, "s3:ReplicateObject", Some("k"), Some(BOBS_REPLICAS), &Context::default()),
        Decision::NotApplicable
    );
    let service = policy(
        r#"{"Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject", "Resource": "*"}"#,
    );
    assert_eq!(
        decide(&service, "s3:PutObject", Some("k"), Some(BOB), &Context::default()),
        Decision::NotApplicable
    );
}

#[test]
fn not_principal_not_action_and_not_resource_invert() {
    let p = policy(
        r#"{"Effect": "Deny", "NotPrincipal": {"AWS": "aliceid"}, "NotAction": "s3:Get*", "NotResource": "arn:aws:s3:::b/public/*"}"#,
    );
    let c = Context::default();
    assert_eq!(decide(&p, "s3:PutObject", Some("private/k"), Some(BOB), &c), Decision::Deny);
    assert_eq!(
        decide(&p, "s3:PutObject", Some("private/k"), None, &c),
        Decision::Deny,
        "anonymous is not alice"
    );
    assert_eq!(decide(&p, "s3:PutObject", Some("private/k"), Some(ALICE), &c), Decision::NotApplicable);
    assert_eq!(decide(&p, "s3:GetObject", Some("private/k"), Some(BOB), &c), Decision::NotApplicable);
    assert_eq!(decide(&p, "s3:PutObject", Some("public/k"), Some(BOB), &c), Decision::NotApplicable);
}

/// One statement per operator, checked against present, absent and non-matching values.
#[test]
fn condition_operators() {
    let check = |cond: &str, present: &[(&str, &str)], expect: bool| {
        let p = policy(&format!(
            r#"{{"Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b", "Condition": {cond}}}"#
        ));
        let got = decide(&p, "s3:ListBucket", None, Some(BOB), &ctx(present)) == Decision::Allow;
        assert_eq!(got, expect, "{cond} with {present:?}");
    };
    let prefix = |v| [("s3:prefix", v)];
    check(r#"{"StringEquals": {"s3:prefix": "home/"}}"#, &prefix("home/"), true);
    check(r#"{"StringEquals": {"s3:prefix": "home/"}}"#, &prefix("Home/"), false);
    check(r#"{"StringEquals": {"s3:prefix": "home/"}}"#, &[], false);
    check(r#"{"StringEquals": {"s3:prefix": ["a", "home/"]}}"#, &prefix("home/"), true);
    check(r#"{"StringNotEquals": {"s3:prefix": "home/"}}"#, &prefix("x"), true);
    check(r#"{"StringNotEquals": {"s3:prefix": "home/"}}"#, &prefix("home/"), false);
    check(r#"{"StringNotEquals": {"s3:prefix": "home/"}}"#, &[], true);
    check(r#"{"StringNotEquals": {"s3:prefix": ["a", "b"]}}"#, &prefix("a"), false);
    check(r#"{"StringEqualsIgnoreCase": {"s3:prefix": "HOME/"}}"#, &prefix("home/"), true);
    check(r#"{"StringNotEqualsIgnoreCase": {"s3:prefix": "HOME/"}}"#, &prefix("home/"), false);
    check(r#"{"StringLike": {"s3:prefix": "home/*"}}"#, &prefix("home/alice/"), true);
    check(r#"{"StringLike": {"s3:prefix": "home/*"}}"#, &prefix("etc/"), false);
    check(r#"{"StringNotLike": {"s3:prefix": "home/*"}}"#, &prefix("etc/"), true);
    check(r#"{"StringEqualsIfExists": {"s3:prefix": "home/"}}"#, &[], true);
    check(r#"{"StringEqualsIfExists": {"s3:prefix": "home/"}}"#, &prefix("etc/"), false);
    check(r#"{"NumericEquals": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "10")], true);
    check(r#"{"NumericNotEquals": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "10")], false);
    check(r#"{"NumericLessThan": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "9")], true);
    check(r#"{"NumericLessThan": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "10")], false);
    check(r#"{"NumericLessThanEquals": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "10")], true);
    check(r#"{"NumericGreaterThan": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "11")], true);
    check(r#"{"NumericGreaterThanEquals": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "9")], false);
    check(r#"{"NumericLessThan": {"s3:max-keys": "10"}}"#, &[("s3:max-keys", "many")], false);
    let now = [("aws:CurrentTime", "2026-12-01T12:00:00Z")];
    check(r#"{"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}"#, &now, true);
    check(r#"{"DateGreaterThan": {"aws:CurrentTime": "2027-01-01"}}"#, &now, false);
    check(r#"{"DateGreaterThanEquals": {"aws:CurrentTime": "1764590400"}}"#, &now, true);
    check(r#"{"DateEquals": {"aws:CurrentTime": "2026-12-01T13:00:00+01:00"}}"#, &now, true);
    check(r#"{"DateNotEquals": {"aws:CurrentTime": "2026-12-01T12:00:00Z"}}"#, &now, false);
    check(r#"{"DateLessThanEquals": {"aws:CurrentTime": "2026-12-01T12:00:00Z"}}"#, &now, true);
    check(r#"{"Bool": {"aws:SecureTransport": "false"}}"#, &[("aws:SecureTransport", "false")], true);
    check(r#"{"Bool": {"aws:SecureTransport": false}}"#, &[("aws:SecureTransport", "true")], false);
    check(r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, &[("aws:SourceIp", "10.1.2.3")], true);
    check(
        r#"{"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "127.0.0.1"]}}"#,
        &[("aws:SourceIp", "127.0.0.1")],
        true,
    );
    check(r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, &[("aws:SourceIp", "11.1.2.3")], false);
    check(
        r#"{"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}"#,
        &[("aws:SourceIp", "2001:db8::1")],
        true,
    );
    check(
        r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
        &[("aws:SourceIp", "11.1.2.3")],
        true,
    );
    check(
        r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
        &[("aws:SourceIp", "10.1.2.3")],
        false,
    );
    check(
        r#"{"ArnLike": {"aws:SourceArn": "arn:aws:s3:::src-*"}}"#,
        &[("aws:SourceArn", "arn:aws:s3:::src-1")],
        true,
    );
    check(
        r#"{"ArnNotEquals": {"aws:SourceArn": "arn:aws:s3:::src-*"}}"#,
        &[("aws:SourceArn", "arn:aws:s3:::src-1")],
        false,
    );
    check(r#"{"Null": {"s3:prefix": "true"}}"#, &[], true);
    check(r#"{"Null": {"s3:prefix": "true"}}"#, &prefix("a"), false);
    check(r#"{"Null": {"s3:prefix": "false"}}"#, &prefix("a"), true);
    check(r#"{"BinaryEquals": {"s3:prefix": "QUJD"}}"#, &prefix("QUJD"), true);
    // Several keys, several operators: all must hold.
    check(
        r#"{"StringEquals": {"s3:prefix": "a", "s3:delimiter": "/"}}"#,
        &[("s3:prefix", "a"), ("s3:delimiter", "/")],
        true,
    );
    check(r#"{"StringEquals": {"s3:prefix": "a", "s3:delimiter": "/"}}"#, &prefix("a"), false);
    check(
        r#"{"StringEquals": {"s3:prefix": "a"}, "NumericLessThan": {"s3:max-keys": "5"}}"#,
        &[("s3:prefix", "a"), ("s3:max-keys", "50")],
        false,
    );
    // Key names in any case.
    check(r#"{"StringEquals": {"S3:Prefix": "a"}}"#, &prefix("a"), true);
}

#[test]
fn set_operators_for_keys_with_several_values() {
    let check = |cond: &str, keys: &[&str], expect: bool| {
        let p = policy(&format!(
            r#"{{"Effect": "Allow", "Principal": "*", "Action": "s3:PutObject", "Resource": "*", "Condition": {cond}}}"#
        ));
        let mut c = Context::default();
        for k in keys {
            c.add("s3:RequestObjectTagKeys", *k);
        }
        assert_eq!(
            decide(&p, "s3:PutObject", Some("k"), Some(BOB), &c) == Decision::Allow,
            expect,
            "{cond} with {keys:?}"
        );
    };
    let all = r#"{"ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": ["team", "env"]}}"#;
    check(all, &["team"], true);
    check(all, &["team", "env"], true);
    check(all, &["team", "owner"], false);
    check(all, &[], true);
    let any = r#"{"ForAnyValue:StringEquals": {"s3:RequestObjectTagKeys": ["team", "env"]}}"#;
    check(any, &["owner", "env"], true);
    check(any, &["owner"], false);
    check(any, &[], false);
}

#[test]
fn tag_keys_keep_their_case() {
    let p = policy(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"s3:ExistingObjectTag/Team": "blue"}}}"#,
    );
    assert!(p.uses_key("s3:existingobjecttag/"));
    let yes = ctx(&[("s3:existingobjecttag/Team", "blue")]);
    let other_case = ctx(&[("s3:ExistingObjectTag/team", "blue")]);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), None, &yes), Decision::Allow);
    assert_eq!(decide(&p, "s3:GetObject", Some("k"), None, &other_case), Decision::NotApplicable);
}

#[test]
fn public_is_everyone_without_a_fixed_source() {
    let public = |statement: &str| policy(statement).is_public();
    assert!(public(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}"#
    ));
    assert!(public(
        r#"{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject", "Resource": "*"}"#
    ));
    assert!(public(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}}"#
    ));
    assert!(public(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"StringLike": {"s3:prefix": "a*"}}}"#
    ));
    assert!(!public(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}"#
    ));
    assert!(!public(
        r#"{"Effect": "Allow", "Principal": {"AWS": "bobid"}, "Action": "s3:GetObject", "Resource": "*"}"#
    ));
    assert!(!public(
        r#"{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}"#
    ));
}

#[test]
fn every_operation_with_an_action_names_a_known_one() {
    for op in [
        "GetObject",
        "HeadObject",
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "DeleteObject",
        "AbortMultipartUpload",
        "ListParts",
        "ListMultipartUploads",
        "ListObjects",
        "ListObjectsV2",
        "HeadBucket",
        "ListObjectVersions",
        "GetObjectTagging",
        "PutObjectTagging",
        "DeleteObjectTagging",
        "GetObjectAcl",
        "PutObjectAcl",
        "GetBucketAcl",
        "PutBucketAcl",
        "GetBucketVersioning",
        "PutBucketVersioning",
        "GetBucketTagging",
        "PutBucketTagging",
        "DeleteBucketTagging",
        "GetBucketLocation",
        "DeleteBucket",
        "GetBucketPolicy",
        "PutBucketPolicy",
        "DeleteBucketPolicy",
        "GetBucketPolicyStatus",
        "GetBucketReplication",
        "PutBucketReplication",
        "DeleteBucketReplication",
        "GetObjectAttributes",
        "GetPublicAccessBlock",
        "PutPublicAccessBlock",
        "DeletePublicAccessBlock",
        "GetBucketOwnershipControls",
        "PutBucketOwnershipControls",
        "DeleteBucketOwnershipControls",
        "GetBucketCors",
        "PutBucketCors",
        "DeleteBucketCors",
    ] {
        for versioned in [false, true] {
            let action = of_operation(op, versioned).unwrap_or_else(|| panic!("{op} has an action"));
            assert!(check_action(action).is_ok(), "{op}: {action}");
        }
    }
    assert_eq!(of_operation("CreateBucket", false), None);
    assert_eq!(of_operation("DeleteObjects", false), None);
}

#[test]
fn policy_variables_are_refused_where_they_would_mean_something() {
    let doc = |version: &str, resource: &str, condition: &str| {
        format!(
            r#"{{"Version": "{version}", "Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                "Resource": "{resource}"{condition}}}]}}"#
        )
    };
    let home = "arn:aws:s3:::b/home/${aws:username}/*";
    let err = Policy::check_supported(&doc("2012-10-17", home, "")).unwrap_err();
    assert!(err.contains("${aws:username}") && err.contains("Resource"), "{err}");
    let cond = r#", "Condition": {"StringLike": {"s3:prefix": ["home/${aws:userid}/*"]}}"#;
    let err = Policy::check_supported(&doc("2012-10-17", "arn:aws:s3:::b/*", cond)).unwrap_err();
    assert!(err.contains("${aws:userid}") && err.contains("Condition"), "{err}");
    // In a 2008-10-17 policy, S3 too reads `${...}` as written.
    assert_eq!(Policy::check_supported(&doc("2008-10-17", home, "")), Ok(()));
    assert_eq!(Policy::check_supported(&doc("2012-10-17", "arn:aws:s3:::b/*", "")), Ok(()));
}
