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
    json!({ "name": "id", "in": "path", "required": true, "description": "The order's id (UUID). With an admin token, also its order_ref or its short id (the id's last 12 characters).", "schema": { "type": "string" } })
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
/// The schema of an order as the API shows it.
fn order_schema(states: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "string" },
            "order_ref": { "type": "string" },
            "state": { "type": "string", "enum": states },
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
            "candidates": { "type": "array", "description": "Admin view of an order needing attention: servers a discovery scan found (ip, package_id, ram_gb, expiry, first_seen); adopt one with resolve.", "items": { "type": "object" } },
            "os_name": { "type": ["string", "null"], "description": "The ordered OS by name." },
            "expiry": { "type": ["string", "null"], "description": "The server's ExpiryDate (YYYY-MM-DD) as status last said, once ready." },
            "notifications": { "type": "array", "description": "Admin view only: every delivery of the order's notices (id, channel, notice, event, state: queued | retrying | delivered | abandoned, attempts, last_error, created_at, delivered_at, next_at); resend one with POST .../notifications/{delivery}/resend.", "items": { "type": "object" } },
            "server": { "type": "object", "description": "Once a server is owned: what status last said (power Online/Offline, os, expiry, action_status, checked_at).", "properties": { "power": { "type": ["string", "null"] }, "os": { "type": ["string", "null"] }, "expiry": { "type": ["string", "null"] }, "action_status": { "type": ["string", "null"] }, "checked_at": { "type": ["string", "null"], "format": "date-time" } } },
            "actions": { "type": "array", "items": { "$ref": "#/components/schemas/ServerAction" } }
        }
    })
}

/// The schema of one action on a server.
fn server_action_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": { "type": "integer" },
            "action": { "type": "string", "enum": ["start", "stop", "reboot", "reinstall", "change_os"] },
            "os": { "type": ["string", "null"], "description": "The image, for change_os." },
            "state": { "type": "string", "enum": ["pending", "done", "failed"] },
            "requested_by": { "type": "string", "description": "customer, admin:<name> or provisioning (the ordered OS)." },
            "reason": { "type": ["string", "null"] },
            "stage": { "type": "string", "enum": ["start", "stop", "format", "changeos", "install"] },
            "attempts": { "type": "integer" },
            "created_at": { "type": "string", "format": "date-time" },
            "finished_at": { "type": ["string", "null"], "format": "date-time" },
            "result": { "type": ["string", "null"] }
        }
    })
}

/// The body of an action request.
fn action_request_schema() -> Value {
    json!({
        "type": "object",
        "required": ["action"],
        "additionalProperties": false,
        "properties": {
            "action": { "type": "string", "enum": ["start", "stop", "reboot", "reinstall", "change_os"], "description": "reboot is stop then start (SmartVPS has none); reinstall is format (same image, new password); change_os is changeos (new password)." },
            "os": { "type": "string", "description": "For change_os: a changeos code or readable name." },
            "reason": { "type": "string", "maxLength": 500, "description": "Required for admins; it goes in the timeline." }
        }
    })
}

/// `/api/v1/orders/{id}/actions`.
fn actions_path() -> Value {
    json!({
        "post": {
            "summary": "Ask for an action on the order's server",
            "description": "start, stop, reboot, reinstall or change_os, queued as durable work of the engine: leased, retried on policy.action, recorded in the timeline; an unknown outcome is settled by reading status, never by sending again blindly. A reinstall or change of OS issues a new password, saved encrypted and sent to the customer (order.credentials_changed). One action at a time per server, and at most policy.action.per_hour per hour.",
            "security": [{ "orderToken": [] }, { "adminToken": [] }],
            "parameters": [id_param()],
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ActionRequest" } } } },
            "responses": {
                "202": { "description": "Queued.", "content": { "application/json": { "schema": { "type": "object", "properties": { "action": { "$ref": "#/components/schemas/ServerAction" } } } } } },
                "401": error("No valid token for this order."),
                "404": error("No such order (admins)."),
                "409": error("Another action is in progress on the server, or the order is not ready."),
                "422": error("Unknown action or OS, or an admin gave no reason."),
                "429": error("The server's hourly limit of actions is used up (or too many failed authentications); see Retry-After.")
            }
        },
        "get": {
            "summary": "The actions on the order's server, oldest first",
            "security": [{ "orderToken": [] }, { "adminToken": [] }],
            "parameters": [id_param()],
            "responses": {
                "200": { "description": "The actions.", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/ServerAction" } } } } },
                "401": error("No valid token for this order."),
                "404": error("No such order (admins).")
            }
        }
    })
}

pub fn spec() -> Value {
    let states: Vec<&str> = crate::domain::OrderState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
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
                        "os": { "type": ["string", "null"], "description": "The OS to deliver: a changeos code or its readable name (2012 Windows Server 2012, 2016 Windows Server 2016, 2019 Windows Server 2019, 2022 Windows Server 2022, 11 Windows 11, centos CentOS, ubuntu Ubuntu). Stored as the code. A server that comes with another image is reinstalled with it (changeos) before the credentials are delivered.", "examples": ["2022", "Windows Server 2022", "ubuntu"] }
                    }
                },
                "Order": order_schema(&states),
                "ServerAction": server_action_schema(),
                "ActionRequest": action_request_schema(),
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
                "Cancel": {
                    "type": "object",
                    "required": ["reason"],
                    "additionalProperties": false,
                    "properties": {
                        "reason": { "type": "string", "maxLength": 1000 },
                        "override_server_check": { "type": "boolean", "default": false, "description": "Cancel although the ledger shows a server was or may have been bought (the 422 without it states the evidence); the evidence goes to the timeline as a warning." }
                    }
                },
                "AddressChange": {
                    "type": "object",
                    "required": ["reason", "ip"],
                    "additionalProperties": false,
                    "properties": {
                        "reason": { "type": "string", "maxLength": 1000 },
                        "ip": { "type": "string", "format": "ipv4", "description": "The address to poll instead of the adopted one." },
                        "override_package_check": { "type": "boolean", "default": false, "description": "Accept an address outside the order's package." }
                    }
                },
                "BulkFailed": {
                    "type": "object",
                    "required": ["reason"],
                    "additionalProperties": false,
                    "properties": {
                        "reason": { "type": "string", "maxLength": 1000, "description": "One reason for every order; stored in each timeline with the admin's name." },
                        "phase": { "type": "string", "enum": ["buy", "credentials"], "description": "Only orders that failed in this phase." },
                        "package": { "type": "integer", "description": "Only orders of this package (PID)." },
                        "q": { "type": "string", "maxLength": 200, "description": "Only orders whose order_ref, customer email, server address or id contains this." }
                    }
                },
                "BulkSummary": {
                    "type": "object",
                    "properties": {
                        "done": { "type": "array", "items": { "type": "object", "properties": { "id": { "type": "string" }, "order_ref": { "type": "string" } } } },
                        "refused": { "type": "array", "description": "Orders left as they were, each with why (e.g. a buy-phase retry whose purchase may have bought a server).", "items": { "type": "object", "properties": { "id": { "type": "string" }, "order_ref": { "type": "string" }, "why": { "type": "string" } } } }
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
                    "summary": "Liveness, order counts per state and SmartVPS's health",
                    "description": "200 whenever this process serves. `upstream` says `reachable`, `unreachable since <time>: <why>` or `unknown` (no call yet), from this process's own SmartVPS calls; `upstream_last_success` gives the last successful call per operation (ipstock, buyvps, status).",
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
                        { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } },
                        { "name": "q", "in": "query", "description": "Search: orders whose order_ref, customer email, server address or id (or its short form) contains this, ignoring case.", "schema": { "type": "string", "maxLength": 200 } },
                        { "name": "phase", "in": "query", "description": "Only failed orders that failed in this phase.", "schema": { "type": "string", "enum": ["buy", "credentials"] } }
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
            "/api/v1/orders/{id}/actions": actions_path(),
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
                    "Refused (409) while a purchase is in flight or its outcome is unsettled, and for ready or cancelled orders. Refused (422 on override_server_check, stating the evidence) when the ledger shows a server was or may have been bought, unless override_server_check.",
                    "Cancel"
                )
            },
            "/api/v1/orders/{id}/mark-resolved": {
                "post": action(
                    "Mark a failed order resolved",
                    "The admin settled it outside the engine (a refund, a server handed over by hand): it leaves the failed queue as cancelled; nothing is bought or retried. A server it owns stays owned and the timeline says so.",
                    "Reason"
                )
            },
            "/api/v1/orders/{id}/address": {
                "post": action(
                    "Change an adopted address",
                    "While status has never succeeded for it (awaiting credentials, or failed in the credentials phase), replaces an address an admin adopted and polls the new one with fresh status attempts. Refused (409) for an address a purchase returned or another order owns.",
                    "AddressChange"
                )
            },
            "/api/v1/failed/retry": {
                "post": {
                    "summary": "Retry every failed order a filter matches, with one reason",
                    "description": "Each order as its own retry would be; an order that cannot be retried (a buy-phase retry whose purchase may have bought a server, an order a worker holds) is listed in `refused` with why, and the others go on.",
                    "security": [{ "adminToken": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BulkFailed" } } } },
                    "responses": {
                        "200": ok("What was retried and what was refused.", "BulkSummary"),
                        "400": error("Malformed JSON."),
                        "401": error("No valid admin token."),
                        "422": error("A field is missing or invalid (`field` names it), e.g. no reason.")
                    }
                }
            },
            "/api/v1/failed/mark-resolved": {
                "post": {
                    "summary": "Mark every failed order a filter matches resolved, with one reason",
                    "security": [{ "adminToken": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/BulkFailed" } } } },
                    "responses": {
                        "200": ok("What was resolved and what was refused.", "BulkSummary"),
                        "400": error("Malformed JSON."),
                        "401": error("No valid admin token."),
                        "422": error("A field is missing or invalid (`field` names it), e.g. no reason.")
                    }
                }
            },
            "/api/v1/orders/{id}/notifications/{delivery}/resend": {
                "post": {
                    "summary": "Resend one of the order's notifications",
                    "description": "Queues the delivery again on its channel under a new idempotency key, and records who and why in the timeline. Refused (409) while it is still queued or retrying. The body and its reason are optional.",
                    "security": [{ "adminToken": [] }],
                    "parameters": [
                        id_param(),
                        { "name": "delivery", "in": "path", "required": true, "description": "The delivery's id, from the order view's `notifications`.", "schema": { "type": "integer" } }
                    ],
                    "requestBody": {
                        "required": false,
                        "content": { "application/json": { "schema": { "type": "object", "properties": { "reason": { "type": "string" } }, "additionalProperties": false } } }
                    },
                    "responses": {
                        "200": { "description": "Queued again: `{\"order_id\", \"delivery\", \"key\"}`." },
                        "401": error("No valid admin token."),
                        "404": error("No such order or delivery."),
                        "409": error("The delivery is still on its way."),
                        "422": error("A bad reason.")
                    }
                }
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
