use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, on_both_stores, parts, TestApp};

on_both_stores!(
    a_body_without_json_content_type_is_unsupported_media_type,
    malformed_json_is_invalid_json,
    well_formed_json_of_the_wrong_shape_is_a_validation_error,
    a_body_over_the_limit_is_payload_too_large,
    unknown_routes_and_methods_get_json_errors,
    request_ids_are_echoed_when_usable_and_generated_otherwise,
    invalid_path_ids_are_validation_errors_naming_the_field,
);

async fn send(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url(path)).body(body.to_owned());
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    parts(request.send().await.unwrap()).await
}

async fn a_body_without_json_content_type_is_unsupported_media_type(app: TestApp) {
    let body = r#"{"sessionId":"m1"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, response) = send(&app, "/sessions", content_type, body).await;
        assert_error(status, &response, 415, "unsupported_media_type");
    }
    let accepted = [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ];
    for (i, content_type) in accepted.into_iter().enumerate() {
        let id = format!("m-{i}");
        let (status, response) = send(
            &app,
            "/sessions",
            Some(content_type),
            &format!(r#"{{"sessionId":"{id}"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{content_type}: {response}");
    }
    let (status, response) = send(&app, "/sessions/m-0/complete", Some("text/plain"), "{}").await;
    assert_error(status, &response, 415, "unsupported_media_type");
    // JSON is UTF-8: a body declared in another charset would be misread.
    for charset in ["utf-16", "\"UTF-16LE\"", "iso-8859-1"] {
        let content_type = format!("application/json; charset={charset}");
        let (status, response) = send(&app, "/sessions", Some(&content_type), body).await;
        let message = assert_error(status, &response, 415, "unsupported_media_type");
        assert!(
            response["error"]["message"]
                .as_str()
                .unwrap()
                .contains("UTF-8"),
            "{message}"
        );
    }
    for (charset, id) in [("\"UTF-8\"", "m-quoted"), ("us-ascii", "m-ascii")] {
        let (status, response) = send(
            &app,
            "/sessions",
            Some(&format!("application/json; charset={charset}")),
            &format!(r#"{{"sessionId":"{id}"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{charset}: {response}");
    }
    // A compressed body would be parsed as if it were not.
    for (coding, id, want) in [("gzip", "m-gz", 415), ("identity", "m-id", 201)] {
        let response = app
            .client
            .post(app.url("/sessions"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(format!(r#"{{"sessionId":"{id}"}}"#))
            .send()
            .await
            .unwrap();
        let (status, response) = parts(response).await;
        assert_eq!(status.as_u16(), want, "{coding}: {response}");
    }
    // An empty optional body is no body, whatever its headers say of it.
    let response = app
        .client
        .post(app.url("/sessions/m-id/complete"))
        .header("content-type", "application/json; charset=utf-16")
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let (status, response) = parts(response).await;
    assert_eq!(status, StatusCode::OK, "{response}");
}

async fn malformed_json_is_invalid_json(app: TestApp) {
    app.create_session("m2").await;
    for body in [
        "",
        "{",
        "{\"sessionId\": }",
        "[1,",
        "nul",
        "{\"a\":1} {\"b\":2}",
        "\u{feff}{}",
    ] {
        let (status, response) = send(&app, "/sessions", Some("application/json"), body).await;
        assert_error(status, &response, 400, "invalid_json");
        let (status, response) =
            send(&app, "/sessions/m2/events", Some("application/json"), body).await;
        assert_error(status, &response, 400, "invalid_json");
    }
    // Bytes that are not UTF-8, inside a string or out of it.
    for body in [
        &b"{\"sessionId\": \"a\xffb\"}"[..],
        b"{\"sessionId\": \"a\"}\xff",
    ] {
        let response = app
            .client
            .post(app.url("/sessions"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let (status, response) = parts(response).await;
        assert_error(status, &response, 400, "invalid_json");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let body = format!(r#"{{"eventId":"e","type":"t","payload":{{"a":{deep}}}}}"#);
    let (status, response) =
        send(&app, "/sessions/m2/events", Some("application/json"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
}

async fn well_formed_json_of_the_wrong_shape_is_a_validation_error(app: TestApp) {
    app.create_session("m3").await;
    for (path, body, field) in [
        ("/sessions/m3/complete", r#"{"status": 5}"#, "status"),
        ("/sessions/m3/complete", r#"{"status": "done"}"#, "status"),
        ("/sessions", r#"{"sessionId": null}"#, "sessionId"),
        (
            "/sessions/m3/events",
            r#"{"eventId": "e", "type": ["t"]}"#,
            "type",
        ),
    ] {
        let (status, response) = send(&app, path, Some("application/json"), body).await;
        let details = assert_error(status, &response, 400, "validation_failed");
        assert_eq!(details["field"], field, "{body}");
    }
}

async fn a_body_over_the_limit_is_payload_too_large(app: TestApp) {
    let padding = "x".repeat(256 * 1024);
    let body = format!(r#"{{"sessionId":"m3","metadata":{{"p":"{padding}"}}}}"#);
    let (status, response) = send(&app, "/sessions", Some("application/json"), &body).await;
    let details = assert_error(status, &response, 413, "payload_too_large");
    assert_eq!(details["limitBytes"], 256 * 1024);
    // A body declared too large is refused before it is sent: no `100 Continue` first.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = "POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 300000\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0; 4096];
        while !String::from_utf8_lossy(&reply).contains("payload_too_large") {
            match stream.read(&mut chunk).await.unwrap() {
                0 => break,
                n => reply.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(answered.is_ok(), "no answer before the body: {reply:?}");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
}

async fn unknown_routes_and_methods_get_json_errors(app: TestApp) {
    let (status, body) = app.get("/nothing/here").await;
    assert_error(status, &body, 404, "not_found");
    let response = app.client.put(app.url("/sessions")).send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 405, "method_not_allowed");
    let response = app
        .client
        .delete(app.url("/sessions/x/events"))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 405, "method_not_allowed");
}

async fn request_ids_are_echoed_when_usable_and_generated_otherwise(app: TestApp) {
    let echoed = app
        .client
        .get(app.url("/sessions/none"))
        .header("x-request-id", "trace-42:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-42:abc");
    let (_, body) = parts(echoed).await;
    assert_eq!(body["error"]["requestId"], "trace-42:abc");

    for unusable in ["x".repeat(129), "has space".to_owned(), String::new()] {
        let response = app
            .client
            .get(app.url("/sessions/none"))
            .header("x-request-id", unusable.as_str())
            .send()
            .await
            .unwrap();
        let generated = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!generated.is_empty() && generated != unusable);
        let (_, body) = parts(response).await;
        assert_eq!(body["error"]["requestId"], generated.as_str());
    }
    let ok = app.post_raw("/sessions", &json!({"sessionId": "m4"})).await;
    assert!(ok.headers().contains_key("x-request-id"));
}

async fn invalid_path_ids_are_validation_errors_naming_the_field(app: TestApp) {
    for path in [
        "/sessions/a%20b",
        "/sessions/%24where",
        "/sessions/%7B%7D",
        "/sessions/a%00b",
        "/sessions/..%2F..%2Fetc",
        &format!("/sessions/{}", "x".repeat(129)),
    ] {
        let (status, body) = app.get(path).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], "sessionId", "{path}");
    }
    let (status, body) = app.get("/sessions/ok/events/a%2Fb").await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "eventId");
}
