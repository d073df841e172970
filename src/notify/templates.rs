//! What notices say: plain-text templates for the customer and for the admins.
//!
//! Every customer text is a subject and a body with `{variables}`; the built-in texts below can
//! be replaced per notice under `[notify.templates.<notice>]` ([`Templates`]). Failure texts say
//! why in the customer's words (never the admin's evidence) and what happens next.
//!
//! The customer's "ready" text includes the credentials when the channel was given them (that is
//! the point of it); channels that are not (the log, untrusted webhooks) get a text that says
//! where the login details went instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::domain::{Audience, NoticeKind, Order, OrderState, Phase};

use super::Event;

/// A subject line and a plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// Subject line.
    pub subject: String,
    /// Body.
    pub body: String,
}

/// The customer texts that can be replaced, by their config name (`[notify.templates.failed]`).
pub const TEMPLATE_NAMES: [&str; 14] = [
    "provisioning",
    "ready",
    "failed",
    "delayed",
    "needs_attention",
    "cancelled",
    "resumed",
    "credentials_changed",
    "action_completed",
    "action_failed",
    "expiry_reminder",
    "renewed",
    "expired",
    "terminated",
];

/// The variables a template may use.
pub const VARIABLES: [&str; 10] = [
    "name",
    "order_ref",
    "order_id",
    "reason",
    "next_step",
    "login",
    "server_ip",
    "support_url",
    "signature",
    "closing",
];

/// A replacement text; either half may be left to the built-in one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    /// Subject with variables.
    pub subject: Option<String>,
    /// Body with variables.
    pub body: Option<String>,
}

/// The configurable parts of what notices say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Templates {
    /// Signs every customer text (`{signature}`, and the end of `{closing}`); empty: none.
    pub signature: String,
    /// Where customers get help (`{support_url}`, and a "Need help?" line in `{closing}`).
    pub support_url: Option<String>,
    /// The service's public base URL: admin alerts link to the order's dashboard page.
    pub public_url: Option<String>,
    /// Replacement texts by template name ([`TEMPLATE_NAMES`]).
    pub overrides: BTreeMap<String, Template>,
}

impl Templates {
    /// The first `{variable}` in `text` that is not one of [`VARIABLES`], if any; an unclosed
    /// brace counts as one. `{{` and `}}` write a literal brace.
    pub fn unknown_variable(text: &str) -> Option<String> {
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('{') {
                rest = stripped;
                continue;
            }
            let Some(end) = after.find('}') else {
                return Some(after.to_string());
            };
            let name = &after[..end];
            if !VARIABLES.contains(&name) {
                return Some(name.to_string());
            }
            rest = &after[end + 1..];
        }
        None
    }

    /// The order's dashboard page, when a public URL is configured.
    pub fn order_url(&self, order: &Order) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|base| format!("{}/admin/orders/{}", base.trim_end_matches('/'), order.id))
    }

    fn text(&self, name: &str, subject: &str, body: &str) -> (String, String) {
        let o = self.overrides.get(name);
        (
            o.and_then(|t| t.subject.clone())
                .unwrap_or_else(|| subject.to_string()),
            o.and_then(|t| t.body.clone())
                .unwrap_or_else(|| body.to_string()),
        )
    }
}

/// Replaces each `{variable}` with its value (unknown ones are kept as written: the
/// configuration refuses them).
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = &rest[i..];
        if c.starts_with("{{") || c.starts_with("}}") {
            out.push_str(&c[..1]);
            rest = &c[2..];
            continue;
        }
        if let Some(after) = c.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        match c[1..].find('}') {
            Some(end) => {
                let name = &c[1..=end];
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&c[..end + 2]),
                }
                rest = &c[end + 2..];
            }
            None => {
                out.push_str(c);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of `event` for its audience.
pub fn render(event: &Event) -> Text {
    match (event.kind.audience(), &event.order) {
        (Audience::Customer, Some(order)) => customer(event, order),
        (Audience::Customer, None) => Text {
            subject: "Order update".into(),
            body: event.detail.clone().unwrap_or_default(),
        },
        (Audience::Admin, _) => admin(event),
    }
}

/// Why it failed, in the customer's words: the admin's reason holds evidence and provider
/// detail a customer should not read.
pub fn customer_reason(order: &Order) -> String {
    let Some(f) = &order.failure else {
        return "something went wrong while setting up your server".into();
    };
    if order.state == OrderState::NeedsAttention {
        return "we need to confirm your purchase with our provider before going on".into();
    }
    match f.phase {
        Phase::Credentials => {
            "your server was created, but its login details were not ready in time".into()
        }
        Phase::Buy => {
            let r = f.reason.to_ascii_lowercase();
            if r.contains("sold out") || r.contains("stock") || r.contains("no free") {
                "the server package you ordered is out of stock at our provider right now".into()
            } else {
                "our provider did not complete the purchase of your server".into()
            }
        }
    }
}

const PROVISIONING: (&str, &str) = (
    "Your server is being provisioned...",
    "Hi {name},\n\nyour payment for order {order_ref} is confirmed. Your server is being provisioned...\n\
     We will write again as soon as it is ready, with your login details.\n{closing}",
);
const READY: (&str, &str) = (
    "Your server is ready!",
    "Hi {name},\n\nyour server for order {order_ref} is ready!\n\n{login}{closing}",
);
const FAILED: (&str, &str) = (
    "We could not provision your server yet",
    "Hi {name},\n\nwe could not provision your server for order {order_ref} yet: {reason}.\n\n\
     What happens next: {next_step}\n{closing}",
);
const DELAYED: (&str, &str) = (
    "Your server is delayed",
    "Hi {name},\n\nyour server for order {order_ref} has been created but is taking longer than usual to \
     become available: {reason}.\n\nWhat happens next: {next_step}\n{closing}",
);
const NEEDS_ATTENTION: (&str, &str) = (
    "Your server is delayed",
    "Hi {name},\n\norder {order_ref} needs a manual check before your server can be delivered: {reason}.\n\n\
     What happens next: {next_step}\n{closing}",
);
const CANCELLED: (&str, &str) = (
    "Your order has been cancelled",
    "Hi {name},\n\norder {order_ref} has been cancelled. If you did not expect this, please contact us.\n{closing}",
);
const CREDENTIALS_CHANGED: (&str, &str) = (
    "Your server was reinstalled: new login details",
    "Hi {name},\n\nthe system of your server for order {order_ref} was installed afresh, with a new password; \
     the old one no longer works.\n\n{login}{closing}",
);
const ACTION_COMPLETED: (&str, &str) = (
    "Your server action is done",
    "Hi {name},\n\nthe action you asked for on your server for order {order_ref} is done.\n{closing}",
);
const ACTION_FAILED: (&str, &str) = (
    "Your server action could not be completed",
    "Hi {name},\n\nthe action you asked for on your server for order {order_ref} could not be completed.\n\n\
     What happens next: {next_step}\n{closing}",
);
const EXPIRY_REMINDER: (&str, &str) = (
    "Your server expires soon",
    "Hi {name},\n\nyour server for order {order_ref} expires soon. Renew it to keep it running; an unrenewed \
     server is switched off at its expiry.\n{closing}",
);
const RENEWED: (&str, &str) = (
    "Your server was renewed",
    "Hi {name},\n\nyour server for order {order_ref} was renewed for another month. Thank you!\n{closing}",
);
const EXPIRED: (&str, &str) = (
    "Your server has expired",
    "Hi {name},\n\nyour server for order {order_ref} reached its expiry without a renewal and has expired.\n\n\
     What happens next: {next_step}\n{closing}",
);
const TERMINATED: (&str, &str) = (
    "Your server has ended",
    "Hi {name},\n\nyour cancelled service for order {order_ref} reached its expiry: the server has ended.\n{closing}",
);
const RESUMED: (&str, &str) = (
    "Your order is in progress again",
    "Hi {name},\n\nwe are working on order {order_ref} again. We will write as soon as your server is ready.\n{closing}",
);

fn customer(event: &Event, order: &Order) -> Text {
    let t = &event.templates;
    let owned = order
        .failure
        .as_ref()
        .is_some_and(|f| f.phase == Phase::Credentials);
    let (name, (subject, body)) = match event.kind {
        NoticeKind::Provisioning => ("provisioning", PROVISIONING),
        NoticeKind::Ready => ("ready", READY),
        NoticeKind::Failed if owned => ("delayed", DELAYED),
        NoticeKind::Failed => ("failed", FAILED),
        NoticeKind::NeedsAttention => ("needs_attention", NEEDS_ATTENTION),
        NoticeKind::Cancelled => ("cancelled", CANCELLED),
        NoticeKind::CredentialsChanged => ("credentials_changed", CREDENTIALS_CHANGED),
        NoticeKind::ActionCompleted => ("action_completed", ACTION_COMPLETED),
        NoticeKind::ActionFailed => ("action_failed", ACTION_FAILED),
        NoticeKind::ExpiryReminder => ("expiry_reminder", EXPIRY_REMINDER),
        NoticeKind::Renewed => ("renewed", RENEWED),
        NoticeKind::Expired => ("expired", EXPIRED),
        NoticeKind::Terminated => ("terminated", TERMINATED),
        _ => ("resumed", RESUMED),
    };
    let (subject, body) = t.text(name, subject, body);
    let next_step = match (event.kind, owned, event.admins_alerted) {
        (NoticeKind::Failed, true, _) => {
            "Our team will finish setting it up, and you will get your login details as soon as they are ready."
        }
        (_, _, true) => {
            "Our team has been alerted and will retry your order or contact you. You do not need to order again."
        }
        (_, _, false) => {
            "Please contact support if you have questions. You do not need to order again."
        }
    };
    let login = match &event.credentials {
        Some(c) => {
            let mut s = format!(
                "Your login details:\n\n  Address:  {}\n  Username: {}\n  Password: {}\n",
                c.ip,
                c.username,
                c.expose_password()
            );
            if let Some(os) = &c.os {
                let _ = writeln!(s, "  System:   {os}");
            }
            s.push_str("\nPlease change the password after your first login.\n");
            s
        }
        None => format!(
            "Server address: {}. Your login details are sent to {} separately.\n",
            order
                .server_ip
                .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            order.customer.email
        ),
    };
    let mut closing = String::new();
    if let Some(url) = &t.support_url {
        let _ = writeln!(closing, "\nNeed help? {url}");
    }
    if !t.signature.is_empty() {
        let _ = writeln!(closing, "\n{}", t.signature);
    }
    let vars = [
        ("name", order.customer.name.clone()),
        ("order_ref", order.order_ref.as_str().to_string()),
        ("order_id", order.id.to_string()),
        ("reason", customer_reason(order)),
        ("next_step", next_step.to_string()),
        ("login", login),
        (
            "server_ip",
            order.server_ip.map(|i| i.to_string()).unwrap_or_default(),
        ),
        ("support_url", t.support_url.clone().unwrap_or_default()),
        ("signature", t.signature.clone()),
        ("closing", closing),
    ];
    Text {
        subject: fill(&subject, &vars),
        body: fill(&body, &vars),
    }
}

fn admin(event: &Event) -> Text {
    let Some(order) = &event.order else {
        let detail = event.detail.clone().unwrap_or_default();
        let subject = match event.kind {
            NoticeKind::AdminLowStock => format!("[provisioner] Low stock: {detail}"),
            _ => format!("[provisioner] Alert: {detail}"),
        };
        return Text {
            subject,
            body: format!("{detail}\n\nEvent {}.\n", event.event_id),
        };
    };
    let what = match event.kind {
        NoticeKind::AdminFailed => "failed",
        NoticeKind::AdminNeedsAttention => "needs your decision",
        NoticeKind::AdminRenewalFailed => "could not be renewed",
        _ => "needs a look",
    };
    let subject = format!("[provisioner] Order {} {what}", order.order_ref.as_str());
    let mut body = format!(
        "Order {} ({}) {what}.\n\n  Customer: {} <{}>\n  Package:  {} ({} GB RAM)\n  State:    {}\n",
        order.order_ref.as_str(),
        order.id,
        order.customer.name,
        order.customer.email,
        order.package_id,
        order.ram_gb.get(),
        order.state,
    );
    if let Some(ip) = order.server_ip {
        let _ = writeln!(body, "  Server:   {ip} (owned)");
    }
    if let Some(f) = &order.failure {
        let _ = writeln!(
            body,
            "  Phase:    {}\n  Reason:   {}",
            f.phase.as_str(),
            f.reason
        );
    }
    if let Some(url) = event.templates.order_url(order) {
        let _ = writeln!(body, "  Open:     {url}");
    }
    let action = match order.state {
        OrderState::Failed => format!(
            "\nRetry it with `provisioner orders retry {} --reason \"...\"` (a retry never buys when a server is owned).\n",
            order.id
        ),
        OrderState::NeedsAttention => format!(
            "\nInspect it with `provisioner orders show {}`: the timeline and purchase ledger hold the evidence.\n",
            order.id
        ),
        _ => "\nThe order has changed since this alert was raised.\n".to_string(),
    };
    body.push_str(&action);
    Text { subject, body }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use secrecy::SecretString;

    use super::*;
    use crate::clock::Timestamp;
    use crate::domain::{Credentials, NewOrder, OrderRequest, order::CustomerRequest};

    fn order() -> Order {
        let req = OrderRequest {
            order_ref: "pay-1".into(),
            package: 7,
            ram_gb: 4,
            customer: CustomerRequest {
                email: "ann@example.com".into(),
                name: "Ann".into(),
            },
            os: None,
        };
        Order::accept(NewOrder::parse(&req).unwrap(), Timestamp(0))
    }

    fn event(kind: NoticeKind, order: Option<Order>, credentials: Option<Credentials>) -> Event {
        Event {
            key: "k".into(),
            event_id: "e".into(),
            kind,
            order,
            credentials,
            detail: None,
            occurred_at: Timestamp(0),
            attempt: 1,
            admins_alerted: true,
            templates: std::sync::Arc::new(Templates::default()),
        }
    }

    #[test]
    fn ready_carries_the_credentials_only_when_given_them() {
        let mut o = order();
        o.server_ip = Some(Ipv4Addr::new(10, 0, 0, 9));
        let creds = Credentials {
            ip: Ipv4Addr::new(10, 0, 0, 9),
            username: "root".into(),
            password: SecretString::from("pw-XYZ-123"),
            os: Some("ubuntu".into()),
        };
        let with = render(&event(NoticeKind::Ready, Some(o.clone()), Some(creds)));
        assert_eq!(with.subject, "Your server is ready!");
        assert!(with.body.contains("Password: pw-XYZ-123"), "{}", with.body);
        assert!(with.body.contains("Username: root"));
        let without = render(&event(NoticeKind::Ready, Some(o), None));
        assert!(!without.body.contains("Password"), "{}", without.body);
        assert!(without.body.contains("10.0.0.9"));
    }

    #[test]
    fn the_team_is_only_said_to_be_alerted_when_it_was() {
        let mut e = event(NoticeKind::NeedsAttention, Some(order()), None);
        assert!(render(&e).body.contains("Our team has been alerted"));
        e.admins_alerted = false;
        assert!(!render(&e).body.contains("alerted"), "{}", render(&e).body);
    }

    #[test]
    fn admin_alerts_name_the_order_and_the_way_out() {
        let mut o = order();
        o.fail(Phase::Buy, "buyVps failed 3 times", Timestamp(1))
            .unwrap();
        let t = render(&event(NoticeKind::AdminFailed, Some(o.clone()), None));
        assert_eq!(t.subject, "[provisioner] Order pay-1 failed");
        assert!(t.body.contains("buyVps failed 3 times"), "{}", t.body);
        assert!(
            t.body.contains(&format!("orders retry {}", o.id)),
            "{}",
            t.body
        );
        assert!(
            !t.body.contains("/admin/orders/"),
            "no link without public_url"
        );
        let mut linked = event(NoticeKind::AdminFailed, Some(o.clone()), None);
        linked.templates = std::sync::Arc::new(Templates {
            public_url: Some("https://ops.example.com/".into()),
            ..Templates::default()
        });
        assert!(
            render(&linked)
                .body
                .contains(&format!("https://ops.example.com/admin/orders/{}", o.id)),
            "{}",
            render(&linked).body
        );
        let mut low = event(NoticeKind::AdminLowStock, None, None);
        low.detail = Some("package 7 has 1 free address".into());
        let t = render(&low);
        assert_eq!(
            t.subject,
            "[provisioner] Low stock: package 7 has 1 free address"
        );
    }

    #[test]
    fn failure_texts_say_why_in_customer_words_and_what_happens_next() {
        let mut o = order();
        o.fail(
            Phase::Buy,
            "buyVps failed 3 times; last: package 7 is sold out (ipstock free=0)",
            Timestamp(1),
        )
        .unwrap();
        let t = render(&event(NoticeKind::Failed, Some(o), None));
        assert!(t.body.contains("out of stock"), "{}", t.body);
        assert!(!t.body.contains("ipstock"), "no admin detail: {}", t.body);
        assert!(t.body.contains("What happens next: Our team"), "{}", t.body);
    }

    #[test]
    fn templates_replace_texts_with_variables_and_refuse_unknown_ones() {
        let mut e = event(NoticeKind::Provisioning, Some(order()), None);
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "provisioning".to_string(),
            Template {
                subject: Some("Order {order_ref} received {{ok}}".into()),
                body: Some("Dear {name}. {support_url} {signature}".into()),
            },
        );
        e.templates = std::sync::Arc::new(Templates {
            signature: "Acme Hosting".into(),
            support_url: Some("https://acme.example/help".into()),
            public_url: None,
            overrides,
        });
        let t = render(&e);
        assert_eq!(t.subject, "Order pay-1 received {ok}");
        assert_eq!(t.body, "Dear Ann. https://acme.example/help Acme Hosting");
        assert_eq!(
            Templates::unknown_variable("Hi {name} {nmae}"),
            Some("nmae".into())
        );
        assert_eq!(Templates::unknown_variable("Hi {{literal}} {name}"), None);
        assert_eq!(Templates::unknown_variable("Hi {name"), Some("name".into()));
    }
}
