//! The OpenAPI 3.1 document of the JSON API, served at `GET /api/v1/openapi.json`.
//!
//! Written by hand (the API is small and its prose matters more than generated schemas); a test
//! compares its paths and methods with [`super::api_routes`], the list the router is built from,
//! so the two cannot drift apart.

use axum::Json;
use serde_json::{Value, json};

/// `GET /api/v1/openapi.json`.
pub(super) async fn document() -> Json<Value> {
    Json(spec())
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } })
}

fn action(summary: &str, description: &str, body: &str) -> Value {
    json!({
        "summary": summary,
        "description": description,
        "security": [{ "adminToken": [] }],
        "parameters": [id_param()],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{body}") } } }
        },
        "responses": {
            "200": ok("The order after the action.", "Order"),
            "400": error("Malformed JSON."),
            "401": error("No valid admin token."),
            "404": error("No such order."),
            "409": error("The action does not apply to the order as it is, or a worker holds it right now."),
            "422": error("A field is missing or invalid (`field` names it), e.g. no reason."),
        }
    })
}

/// The document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "provisioner",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Turns paid VPS orders into SmartVPS servers, never buying twice. Admin endpoints need an admin \
                token (`Authorization: Bearer TOKEN`); an order's detail and credentials also accept the order's own \
                access token, returned by intake. Only the credentials endpoint ever returns a password."
        },
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer", "description": "An admin token from `[[admin.tokens]]` or PROVISIONER_ADMIN_TOKENS." },
                "orderToken": { "type": "http", "scheme": "bearer", "description": "The order's access token from intake's answer." },
                "storefrontSignature": { "type": "apiKey", "in": "header", "name": "Provisioner-Signature", "description": "t=UNIX_SECONDS,v1=HEX: HMAC-SHA256 of `UNIX_SECONDS.body` keyed by the storefront's secret, within 300 s." },
                "storefrontSecret": { "type": "http", "scheme": "bearer", "description": "A storefront's secret itself, for storefronts that cannot sign." }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": { "type": "string" },
                        "field": { "type": "string", "description": "The request field at fault (422 only)." }
                    }
                },
                "OrderRequest": {
                    "type": "object",
                    "required": ["order_ref", "package", "ram_gb", "customer"],
                    "additionalProperties": false,
                    "properties": {
                        "order_ref": { "type": "string", "maxLength": 128, "description": "The storefront's payment or order id; intake is idempotent on it." },
                        "package": { "type": "integer", "minimum": 1, "description": "SmartVPS package id (PID); must be in the catalog and active." },
                        "ram_gb": { "type": "integer", "minimum": 1, "maximum": 512 },
                        "customer": {
                            "type": "object",
                            "required": ["email", "name"],
                            "additionalProperties": false,
                            "properties": { "email": { "type": "string" }, "name": { "type": "string" } }
                        },
                        "os": { "type": ["string", "null"], "enum": ["2012", "2016", "2019", "2022", "11", "centos", "ubuntu", null] }
                    }
                },
                "Order": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string" },
                        "order_ref": { "type": "string" },
                        "state": { "type": "string", "enum": ["queued", "buying", "awaiting_credentials", "installing_os", "ready", "failed", "needs_attention", "cancelled", "expired", "terminated"] },
                        "package": { "type": "integer" },
                        "ram_gb": { "type": "integer" },
                        "os": { "type": ["string", "null"] },
                        "customer": { "type": "object" },
                        "storefront": { "type": ["string", "null"], "description": "The storefront that sent it." },
                        "attempts": { "type": "object", "properties": { "buy": { "type": "integer" }, "status": { "type": "integer" } } },
                        "server_ip": { "type": ["string", "null"] },
                        "failure": { "type": ["object", "null"], "properties": { "phase": { "type": "string", "enum": ["buy", "credentials"] }, "reason": { "type": "string" } } },
                        "run_at": { "type": ["string", "null"], "format": "date-time" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "updated_at": { "type": "string", "format": "date-time" },
                        "ready_at": { "type": ["string", "null"], "format": "date-time" },
                        "timeline": { "type": "array", "description": "Admin view only.", "items": { "type": "object" } },
                        "purchases": { "type": "array", "description": "Admin view only: the purchase ledger.", "items": { "type": "object" } },
                        "candidates": { "type": "array", "description": "Admin view of an order needing attention: servers a discovery scan found (ip, package_id, ram_gb, expiry, first_seen); adopt one with resolve.", "items": { "type": "object" } }
                    }
                },
                "IntakeResponse": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Order" },
                        { "type": "object", "required": ["access_token"], "properties": { "access_token": { "type": "string", "description": "Bearer token for this order's detail and credentials. Every answer for the order carries the same token; it changes only when rotated. Null only for an order whose token was issued before tokens were derived (see access_token_note)." } } }
                    ]
                },
                "OrderList": {
                    "type": "object",
                    "properties": {
                        "orders": { "type": "array", "items": { "$ref": "#/components/schemas/Order" } },
                        "counts": { "type": "object", "additionalProperties": { "type": "integer" } },
                        "limit": { "type": "integer" },
                        "offset": { "type": "integer" },
                        "next_offset": { "type": ["integer", "null"] }
                    }
                },
                "Credentials": {
                    "type": "object",
                    "properties": {
                        "order_id": { "type": "string" },
                        "ip": { "type": "string" },
                        "username": { "type": "string" },
                        "password": { "type": "string" },
                        "os": { "type": ["string", "null"] }
                    }
                },
                "Reason": {
                    "type": "object",
                    "required": ["reason"],
                    "additionalProperties": false,
                    "properties": { "reason": { "type": "string", "maxLength": 1000, "description": "Why; stored in the timeline with the admin's name." } }
                },
                "Resolution": {
                    "type": "object",
                    "required": ["action", "reason"],
                    "additionalProperties": false,
                    "properties": {
                        "action": { "type": "string", "enum": ["adopt", "not_bought", "fail"], "description": "adopt: the server at `ip` is ours, continue to credentials. not_bought: nothing was bought, buy again with fresh attempts. fail: give up." },
                        "reason": { "type": "string", "maxLength": 1000 },
                        "ip": { "type": "string", "format": "ipv4", "description": "Required for adopt." },
                        "override_package_check": { "type": "boolean", "default": false, "description": "Adopt an address outside the order's package." }
                    }
                },
                "Catalog": {
                    "type": "object",
                    "properties": {
                        "low_stock_threshold": { "type": "integer" },
                        "packages": { "type": "array", "items": { "type": "object", "properties": {
                            "id": { "type": "integer" }, "name": { "type": "string" }, "free": { "type": "integer" },
                            "status": { "type": "string", "enum": ["active", "inactive"] }, "low_stock": { "type": "boolean" },
                            "synced_at": { "type": "string", "format": "date-time" }
                        } } }
                    }
                }
            }
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness and order counts per state",
                    "responses": { "200": { "description": "Up.", "content": { "application/json": { "schema": { "type": "object" } } } } }
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": { "200": { "description": "The OpenAPI document.", "content": { "application/json": { "schema": { "type": "object" } } } } }
                }
            },
            "/api/v1/orders": {
                "post": {
                    "summary": "Intake: a paid order, from a configured storefront",
                    "description": "Signed by the storefront: `Provisioner-Signature: t=UNIX_SECONDS,v1=HEX`, HEX the lowercase hex HMAC-SHA256 (keyed by the storefront's secret) of `UNIX_SECONDS + \".\" + body`, within 300 s of the server's clock; or `Authorization: Bearer SECRET`. JSON only. Idempotent on order_ref: every answer for an order carries the same working access token.",
                    "security": [{ "storefrontSignature": [] }, { "storefrontSecret": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OrderRequest" } } } },
                    "responses": {
                        "201": ok("A new order.", "IntakeResponse"),
                        "200": ok("The same request was posted before: that order, with the same access token.", "IntakeResponse"),
                        "400": error("Malformed JSON."),
                        "401": error("No storefront signature, or a forged or stale one."),
                        "409": error("order_ref names an order with different contents, or another storefront's order."),
                        "413": error("The body is larger than server.max_body_bytes."),
                        "415": error("The body is not sent as application/json."),
                        "422": error("A field is invalid (`field` names it); an unknown or inactive package is refused on `package`."),
                        "429": error("Too many failed authentications from this address; see Retry-After."),
                        "503": error("No storefront is configured, or the catalog was never synced and SmartVPS cannot be read now; retry later.")
                    }
                },
                "get": {
                    "summary": "List orders, newest first",
                    "security": [{ "adminToken": [] }],
                    "parameters": [
                        { "name": "state", "in": "query", "schema": { "type": "string" } },
                        { "name": "package", "in": "query", "schema": { "type": "integer" } },
                        { "name": "from", "in": "query", "description": "Created at or after (RFC 3339 or epoch ms).", "schema": { "type": "string" } },
                        { "name": "to", "in": "query", "description": "Created before (RFC 3339 or epoch ms).", "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } },
                        { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } }
                    ],
                    "responses": {
                        "200": ok("A page of orders and the counts per state.", "OrderList"),
                        "401": error("No valid admin token."),
                        "422": error("A bad query parameter (`field` names it).")
                    }
                }
            },
            "/api/v1/orders/{id}": {
                "get": {
                    "summary": "One order",
                    "description": "With an admin token: with its timeline and purchase ledger. With the order's access token: the order alone. Never a password.",
                    "security": [{ "adminToken": [] }, { "orderToken": [] }],
                    "parameters": [id_param()],
                    "responses": {
                        "200": ok("The order.", "Order"),
                        "401": error("No valid admin or order token."),
                        "404": error("No such order.")
                    }
                }
            },
            "/api/v1/orders/{id}/credentials": {
                "get": {
                    "summary": "The server's login (the only response with a password)",
                    "security": [{ "orderToken": [] }, { "adminToken": [] }],
                    "parameters": [id_param()],
                    "responses": {
                        "200": ok("The credentials. Sent with Cache-Control: no-store.", "Credentials"),
                        "401": error("No valid order or admin token."),
                        "404": error("No such order."),
                        "409": error("Not ready yet.")
                    }
                }
            },
            "/api/v1/orders/{id}/access-token": {
                "post": {
                    "summary": "Rotate the order's customer access token",
                    "description": "The previous token stops working at once; the rotation is recorded in the timeline with who and why. A storefront (signed, as for intake) may rotate the orders it sent and receives the new token. An admin may rotate any order but never sees a customer token: the storefront receives the new one with its next intake replay.",
                    "security": [{ "storefrontSignature": [] }, { "storefrontSecret": [] }, { "adminToken": [] }],
                    "parameters": [id_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Reason" } } } },
                    "responses": {
                        "200": { "description": "Rotated. For a storefront, `access_token` is the new token.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": error("No valid storefront signature or admin token."),
                        "404": error("No such order (or not this storefront's)."),
                        "422": error("No reason."),
                        "429": error("Too many failed authentications from this address; see Retry-After.")
                    }
                }
            },
            "/api/v1/orders/{id}/renewals": {
                "post": {
                    "summary": "Take a paid renewal (storefront)",
                    "description": "Signed as intake is. `{id}` is the order id or the storefront's order_ref. Idempotent on `renewal_ref` (unique across all renewals): a replayed webhook answers 200 with the first renewal and renews nothing again. The engine applies renewals one at a time per server with renewvps under policy.renew; an unknown outcome is settled by reading ExpiryDate, never by sending again blindly.",
                    "security": [{ "storefrontSignature": [] }, { "storefrontSecret": [] }],
                    "parameters": [id_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["renewal_ref"], "additionalProperties": false, "properties": { "renewal_ref": { "type": "string", "maxLength": 128, "description": "The storefront's payment id for this renewal; must not start with admin:." } } } } } },
                    "responses": {
                        "201": { "description": "Queued.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "200": { "description": "A replay: the renewal taken before (nothing renewed again).", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": error("No valid storefront signature."),
                        "404": error("No such order (or not this storefront's)."),
                        "409": error("The reference names another order's renewal, or the order is not ready."),
                        "422": error("A bad field, named."),
                        "429": error("Too many failed authentications from this address; see Retry-After.")
                    }
                }
            },
            "/api/v1/orders/{id}/renew": {
                "post": {
                    "summary": "Renew a server for a month (admin)",
                    "description": "Queues a renewal worked as a paid one; who and why go on the timeline.",
                    "security": [{ "adminToken": [] }],
                    "parameters": [id_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Reason" } } } },
                    "responses": {
                        "202": { "description": "Queued.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": error("No valid admin token."),
                        "404": error("No such order."),
                        "409": error("The order is not ready."),
                        "422": error("No reason.")
                    }
                }
            },
            "/api/v1/orders/{id}/cancel-service": {
                "post": {
                    "summary": "Cancel a server's service (admin or storefront)",
                    "description": "The server is not renewed any more and the order ends terminated at its expiry; on the timeline with who and why. A storefront (signed) may cancel the orders it sent, naming them by id or order_ref.",
                    "security": [{ "adminToken": [] }, { "storefrontSignature": [] }, { "storefrontSecret": [] }],
                    "parameters": [id_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Reason" } } } },
                    "responses": {
                        "200": { "description": "Cancelled.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": error("No valid admin token or storefront signature."),
                        "404": error("No such order."),
                        "409": error("The order is not ready, or is being worked on (try again)."),
                        "422": error("No reason.")
                    }
                }
            },
            "/api/v1/orders/{id}/retry": {
                "post": action(
                    "Retry a failed order",
                    "Resumes at the phase that failed, with fresh attempts. Refused (409) for the buy phase while a purchase's outcome is unknown or a server is already owned.",
                    "Reason"
                )
            },
            "/api/v1/orders/{id}/resolve": {
                "post": action(
                    "Resolve an order that needs attention",
                    "adopt: the address must be a valid IPv4, not another order's, and in the order's package unless override_package_check. not_bought: settles the unknown purchase as not bought and restarts the buy phase. fail: marks the order failed.",
                    "Resolution"
                )
            },
            "/api/v1/orders/{id}/cancel": {
                "post": action(
                    "Cancel an order",
                    "Refused (409) while a purchase is in flight or its outcome is unsettled, and for ready or cancelled orders.",
                    "Reason"
                )
            },
            "/api/v1/catalog": {
                "get": {
                    "summary": "The package catalog as last synced",
                    "security": [{ "adminToken": [] }],
                    "responses": { "200": ok("Packages, low-stock ones flagged.", "Catalog"), "401": error("No valid admin token.") }
                }
            },
            "/api/v1/catalog/sync": {
                "post": {
                    "summary": "Sync the catalog from SmartVPS's stock list now",
                    "security": [{ "adminToken": [] }],
                    "responses": {
                        "200": ok("The catalog after the sync.", "Catalog"),
                        "401": error("No valid admin token."),
                        "502": error("SmartVPS's stock list could not be read.")
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let routed: BTreeSet<(String, String)> = super::super::api_routes()
            .into_iter()
            .map(|(m, p, _)| (m.as_str().to_ascii_lowercase(), p.to_string()))
            .collect();
        let doc = spec();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_responses_and_every_ref_resolves() {
        let doc = spec();
        let text = doc.to_string();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
                let secured = op.get("security").is_some();
                let has_401 = op["responses"].get("401").is_some();
                assert_eq!(
                    secured, has_401,
                    "{method} {path}: security and 401 go together"
                );
            }
        }
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref to {name}"
            );
        }
    }
}
