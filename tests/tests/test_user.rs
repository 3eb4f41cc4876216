//! Checks that the suite really runs as the unprivileged test user that scripts/test selects.

#[test]
fn suite_runs_unprivileged() {
    let uid = nix::unistd::getuid().as_raw();
    println!("integration tests run as uid {uid}");

    let Ok(expected) = std::env::var("MAYFLY_EXPECT_UID") else {
        println!(
            "skipped: MAYFLY_EXPECT_UID is unset, so this run was not started by scripts/test"
        );
        return;
    };
    if expected.is_empty() {
        assert_ne!(
            uid, 0,
            "scripts/test ran as a non-root user, so the tests must not run as root"
        );
        return;
    }
    let expected: u32 = expected
        .parse()
        .expect("MAYFLY_EXPECT_UID must be a number");
    assert_eq!(uid, expected, "test binaries must run as the test user");
    assert_ne!(uid, 0, "the test user must not be root");
}
