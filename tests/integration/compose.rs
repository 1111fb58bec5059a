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

/// The image is built from part of the repository, and cargo refuses a manifest whose
/// declared targets' files are missing, even those the build does not compile. So every
/// target Cargo.toml declares must have a stand-in in the dependency layer and be copied
/// for the real build. (No Docker engine runs here to build the image itself.)
#[test]
fn the_image_build_has_every_target_cargo_toml_declares() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |name: &str| std::fs::read_to_string(format!("{root}/{name}")).unwrap();
    let dockerfile = read("Dockerfile");
    let builder = dockerfile.split("FROM ").nth(1).expect("a builder stage");
    let copied: Vec<&str> = builder
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .flat_map(|args| {
            let args: Vec<&str> = args.split_whitespace().collect();
            args[..args.len() - 1].to_vec()
        })
        .collect();
    let targets = declared_targets(&read("Cargo.toml"));
    assert!(targets.contains(&"src/main.rs".to_owned()), "{targets:?}");
    for path in &targets {
        assert!(
            std::path::Path::new(root).join(path).is_file(),
            "{path} is missing"
        );
        assert!(
            copied
                .iter()
                .any(|c| path.starts_with(c.trim_end_matches('/'))),
            "the Dockerfile does not copy {path}"
        );
        assert!(
            builder.contains(&format!("> {path}")) || builder.contains(&format!("touch {path}")),
            "the Dockerfile's dependency layer has no stand-in for {path}"
        );
    }
}

/// The files of the targets declared in a manifest: `path`, or cargo's default for the kind.
fn declared_targets(manifest: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut section: Option<(&str, Option<String>, Option<String>)> = None;
    let mut finish = |section: Option<(&str, Option<String>, Option<String>)>| {
        if let Some((kind, name, path)) = section {
            let name = name.unwrap_or_default();
            targets.push(path.unwrap_or_else(|| match kind {
                "lib" => "src/lib.rs".to_owned(),
                "bin" => "src/main.rs".to_owned(),
                "example" => format!("examples/{name}.rs"),
                "test" => format!("tests/{name}.rs"),
                _ => format!("benches/{name}.rs"),
            }));
        }
    };
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            finish(section.take());
            let kind = line.trim_matches(|c| c == '[' || c == ']');
            if ["lib", "bin", "example", "test", "bench"].contains(&kind) {
                section = Some((kind, None, None));
            }
        } else if let Some((_, name, path)) = section.as_mut() {
            let value = |line: &str| line.split('"').nth(1).map(str::to_owned);
            if line.starts_with("name") {
                *name = value(line);
            } else if line.starts_with("path") {
                *path = value(line);
            }
        }
    }
    finish(section);
    targets
}
