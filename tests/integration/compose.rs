use std::process::Command;

/// docker-compose.yml is valid: `docker-compose config` parses and resolves it.
/// No Docker engine is needed for that, only the docker-compose client.
#[test]
fn docker_compose_file_is_valid() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("docker-compose")
        .args([
            "-f",
            &format!("{manifest}/docker-compose.yml"),
            "config",
            "-q",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose could not run ({e}); ./scripts/test.sh installs it")
        });
    assert!(
        output.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn docker_compose_runs_mongo_with_a_healthcheck_and_the_service_against_it() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("docker-compose")
        .args(["-f", &format!("{manifest}/docker-compose.yml"), "config"])
        .output()
        .expect("docker-compose runs");
    let resolved = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "image: mongo",
        "healthcheck",
        "DB_URI: mongodb://mongo:27017",
        "service_healthy",
    ] {
        assert!(
            resolved.contains(needle),
            "docker-compose.yml lacks {needle:?}:\n{resolved}"
        );
    }
}
