use super::*;
use proptest::prelude::*;

#[test]
fn respellings_of_a_path_all_become_that_path() {
    let table = [
        ("/admin/secret", "/admin/secret"),
        ("/x/../admin/secret", "/admin/secret"),
        ("/x/%2e%2e/admin/secret", "/admin/secret"),
        ("/x/%2E%2E/admin/secret", "/admin/secret"),
        ("/x/.%2E/admin/secret", "/admin/secret"),
        ("//admin/secret", "/admin/secret"),
        ("/admin//secret", "/admin/secret"),
        ("/./admin/secret", "/admin/secret"),
        ("/%61dmin/secret", "/admin/secret"),
        ("/%41dmin/secret", "/Admin/secret"),
        ("/../../admin/secret", "/admin/secret"),
        ("/a/b/../../../../admin/secret", "/admin/secret"),
        ("/admin/secret/.", "/admin/secret/"),
        ("/admin/secret/x/..", "/admin/secret/"),
        ("/admin/", "/admin/"),
        ("/", "/"),
        ("", "/"),
        ("/..", "/"),
        ("/%7Euser/%7e", "/~user/~"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/admin;jsessionid=1/secret", "/admin;jsessionid=1/secret"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/.b/..c/c..", "/a/.b/..c/c.."),
    ];
    for (raw, want) in table {
        assert_eq!(canonical(raw.as_bytes()).as_deref(), Ok(want), "{raw:?}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    let table = [
        ("/admin%2Fsecret", PathError::EncodedSeparator),
        ("/admin%2fsecret", PathError::EncodedSeparator),
        ("/admin%5Csecret", PathError::EncodedSeparator),
        ("/admin\\secret", PathError::EncodedSeparator),
        ("/x/..\\admin", PathError::EncodedSeparator),
        ("/a%00b", PathError::Control),
        ("/a\0b", PathError::Control),
        ("/a%0d%0aset-cookie", PathError::Control),
        ("/a b", PathError::Control),
        ("/a\tb", PathError::Control),
        ("/a%7f", PathError::Control),
        ("/a%", PathError::BadEscape),
        ("/a%2", PathError::BadEscape),
        ("/a%zz", PathError::BadEscape),
        ("/public/..;/admin/secret", PathError::DotParameters),
        ("/public/.;x/admin", PathError::DotParameters),
    ];
    for (raw, want) in table {
        assert_eq!(canonical(raw.as_bytes()), Err(want), "{raw:?}");
    }
}

#[test]
fn canonical_paths_are_borrowed() {
    for p in ["/", "/api/v1/items", "/a;b=c/d", "/x/"] {
        assert!(
            matches!(canonical(p.as_bytes()), Ok(Cow::Borrowed(_))),
            "{p}"
        );
        assert_eq!(strict(p.as_bytes()), Ok(p));
    }
    // A segment starting with a dot takes the slow way but comes back unchanged.
    assert_eq!(strict(b"/.well-known/acme"), Ok("/.well-known/acme"));
}

#[test]
fn strict_refuses_what_normalize_would_rewrite() {
    for p in ["/x/../a", "//a", "/%61", "/a/./b", "/a%2f"] {
        assert!(strict(p.as_bytes()).is_err(), "{p}");
    }
    assert_eq!(strict(b"/a%20b"), Ok("/a%20b"));
}

/// Paths built from the pieces respellings are made of.
fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"/".to_vec()),
        Just(b"//".to_vec()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"%2e".to_vec()),
        Just(b"%2E".to_vec()),
        Just(b"%61".to_vec()),
        Just(b"%25".to_vec()),
        Just(b"%3f".to_vec()),
        Just(b";p=1".to_vec()),
        Just(b"a".to_vec()),
        Just(b"admin".to_vec()),
        Just(vec![0xc3, 0xa9]),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|ps| {
        let mut p = b"/".to_vec();
        ps.into_iter().for_each(|x| p.extend(x));
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn canonicalising_is_idempotent_and_leaves_no_dot_segments_or_double_slashes(p in path_strategy()) {
        if let Ok(c) = canonical(&p) {
            let c = c.into_owned();
            prop_assert!(c.starts_with('/'), "{c}");
            prop_assert!(!c.contains("//"), "{c}");
            for seg in c.split('/') {
                prop_assert!(seg != "." && seg != "..", "{c}");
            }
            prop_assert!(c.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{c}");
            let again = canonical(c.as_bytes());
            prop_assert_eq!(again.as_deref(), Ok(c.as_str()));
            prop_assert_eq!(strict(c.as_bytes()), Ok(c.as_str()));
        }
    }

    #[test]
    fn canonicalising_never_climbs_above_the_root(depth in 0usize..8, ups in 0usize..12) {
        let mut p = String::new();
        for i in 0..depth { p.push_str(&format!("/d{i}")); }
        for _ in 0..ups { p.push_str("/.."); }
        p.push_str("/leaf");
        let c = canonical(p.as_bytes()).unwrap().into_owned();
        let kept = depth.saturating_sub(ups);
        prop_assert_eq!(c.split('/').filter(|s| !s.is_empty()).count(), kept + 1);
        prop_assert!(c.ends_with("/leaf"));
    }
}
