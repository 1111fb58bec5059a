//! `/openapi.json` describes exactly the routes that exist, and the README documents them.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app, Backend, TestApp};

const ROUTES: [(&str, &str); 15] = [
    ("get", "/docs"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/readyz"),
    ("get", "/sessions"),
    ("post", "/sessions"),
    ("delete", "/sessions/{session_id}"),
    ("get", "/sessions/{session_id}"),
    ("post", "/sessions/{session_id}/complete"),
    ("get", "/sessions/{session_id}/events"),
    ("post", "/sessions/{session_id}/events"),
    ("get", "/sessions/{session_id}/events/stream"),
    ("get", "/sessions/{session_id}/events/{event_id}"),
    ("post", "/sessions/{session_id}/events:batch"),
];

async fn document(app: &TestApp) -> Value {
    let response = app.get_raw("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                found.insert((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_description_lists_every_route_and_every_listed_route_exists() {
    let app = spawn_app(Backend::Memory).await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(operations(&doc), expected);
    for (method, path) in operations(&doc) {
        let concrete = path.replace("{session_id}", "s").replace("{event_id}", "e");
        let response = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(
            body["error"]["code"], "not_found",
            "{method} {path} is not routed"
        );
    }
    // Every operation documents its errors in the one envelope.
    let append = &doc["paths"]["/sessions/{session_id}/events"]["post"]["responses"];
    for status in [
        "201", "200", "400", "401", "404", "408", "409", "413", "415", "500", "503",
    ] {
        assert!(append.get(status).is_some(), "append lacks {status}");
    }
}

#[tokio::test]
async fn the_readme_documents_every_route_and_setting() {
    let app = spawn_app(Backend::Memory).await;
    let doc = document(&app).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let normalise = |text: &str| {
        let mut out = String::new();
        let mut in_braces = false;
        for c in text.chars() {
            match c {
                '{' => {
                    in_braces = true;
                    out.push_str("{}");
                }
                '}' => in_braces = false,
                c if !in_braces => out.push(c),
                _ => {}
            }
        }
        out
    };
    let readme_routes = normalise(&readme);
    for (method, path) in operations(&doc) {
        let mention = format!("{} {}", method.to_uppercase(), normalise(&path));
        assert!(
            readme_routes.contains(&mention),
            "README does not document {mention}"
        );
    }
    let env_example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_conversation-sessions"))
        .arg("--help")
        .current_dir(std::env::temp_dir())
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for line in help.lines() {
        let Some(flag) = line
            .trim_start()
            .strip_prefix("--")
            .and_then(|l| l.split_whitespace().next())
        else {
            continue;
        };
        if matches!(flag, "help" | "version") {
            continue;
        }
        let env = flag.replace('-', "_").to_uppercase();
        assert!(
            readme.contains(&format!("--{flag}")),
            "README does not document --{flag}"
        );
        assert!(readme.contains(&env), "README does not document {env}");
        assert!(
            env_example.contains(&env),
            ".env.example does not document {env}"
        );
    }
}

/// Path ids follow the rule that request bodies declare for them, and parameters with a
/// closed set of values name it, so that a client (or a generated one) can check a request
/// before it sends it.
#[tokio::test]
async fn parameters_declare_the_rules_the_handlers_hold_to() {
    let app = spawn_app(Backend::Memory).await;
    let doc = document(&app).await;
    let rule = &doc["components"]["schemas"]["CreateSessionBody"]["properties"]["sessionId"];
    assert!(rule["pattern"].is_string());
    let mut declared = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(parameters) = operation["parameters"].as_array() else {
                continue;
            };
            for parameter in parameters.iter().filter(|p| p["in"] == "path") {
                let schema = &parameter["schema"];
                assert_eq!(schema["pattern"], rule["pattern"], "{method} {path}");
                assert_eq!(schema["maxLength"], 128, "{method} {path}");
                assert_eq!(parameter["required"], true, "{method} {path}");
                declared += 1;
            }
        }
    }
    // session_id on eight operations, and event_id on one.
    assert_eq!(declared, 9);
    // The other parameters with a closed set of values say so.
    let parameter = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    let include = parameter("/sessions/{session_id}", "include");
    let reference = include["$ref"].as_str().unwrap();
    let name = reference.rsplit('/').next().unwrap();
    assert_eq!(
        doc["components"]["schemas"][name]["enum"],
        serde_json::json!(["events"])
    );
    let resume = parameter("/sessions/{session_id}/events/stream", "Last-Event-ID");
    assert_eq!(resume["pattern"], "^[0-9]{1,18}$");
    // The handlers hold to the same rule: an id at its edge is read, one past it refused.
    let edge = "a".repeat(128);
    let (status, body) = app.get(&format!("/sessions/{edge}")).await;
    assert_error(status, &body, 404, "session_not_found");
    let (status, body) = app.get(&format!("/sessions/{edge}a")).await;
    assert_error(status, &body, 400, "validation_failed");
}

#[tokio::test]
async fn the_docs_page_renders_the_description() {
    let app = spawn_app(Backend::Memory).await;
    let response = app.get_raw("/docs").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("/openapi.json") && page.contains("swagger-ui"));
}
