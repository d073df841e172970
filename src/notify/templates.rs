//! What notices say: plain-text templates for the customer and for the admins.
//!
//! The customer's "ready" text includes the credentials when the channel was given them (that is
//! the point of it); channels that are not (the log, untrusted webhooks) get a text that says
//! where the login details went instead.

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

fn customer(event: &Event, order: &Order) -> Text {
    let name = &order.customer.name;
    let reference = order.order_ref.as_str();
    let team = if event.admins_alerted {
        "Our team has been alerted and will follow up."
    } else {
        "Please contact support if you have questions."
    };
    let (subject, body) = match event.kind {
        NoticeKind::Provisioning => (
            "Your server is being provisioned...".to_string(),
            format!(
                "Hi {name},\n\nyour payment for order {reference} is confirmed. Your server is being provisioned...\n\
                 We will write again as soon as it is ready, with your login details.\n"
            ),
        ),
        NoticeKind::Ready | NoticeKind::CredentialsChanged => {
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
                None => {
                    let ip = order
                        .server_ip
                        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
                    format!(
                        "Server address: {ip}. Your login details are sent to {} separately.\n",
                        order.customer.email
                    )
                }
            };
            if event.kind == NoticeKind::CredentialsChanged {
                (
                    "Your server was reinstalled: new login details".to_string(),
                    format!(
                        "Hi {name},\n\nthe system of your server for order {reference} was installed afresh, with a new \
                         password; the old one no longer works.\n\n{login}"
                    ),
                )
            } else {
                (
                    "Your server is ready!".to_string(),
                    format!("Hi {name},\n\nyour server for order {reference} is ready!\n\n{login}"),
                )
            }
        }
        NoticeKind::ActionCompleted => (
            "Your server action is done".to_string(),
            format!(
                "Hi {name},\n\nthe action you asked for on your server for order {reference} is done{}.\n",
                event
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
        ),
        NoticeKind::ActionFailed => (
            "Your server action could not be completed".to_string(),
            format!(
                "Hi {name},\n\nthe action you asked for on your server for order {reference} could not be completed{}. \
                 {team}\n",
                event
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ),
        NoticeKind::Failed => {
            let owned = order
                .failure
                .as_ref()
                .is_some_and(|f| f.phase == Phase::Credentials);
            if owned {
                (
                    "Your server is delayed".to_string(),
                    format!(
                        "Hi {name},\n\nyour server for order {reference} has been created but is taking longer than usual to \
                         become available. {team}\n"
                    ),
                )
            } else {
                (
                    "We could not provision your server yet".to_string(),
                    format!(
                        "Hi {name},\n\nwe could not provision your server for order {reference} yet. {team}\n"
                    ),
                )
            }
        }
        NoticeKind::NeedsAttention => (
            "Your server is delayed".to_string(),
            format!(
                "Hi {name},\n\norder {reference} needs a manual check before your server can be delivered. {team}\n"
            ),
        ),
        NoticeKind::ExpiryReminder => (
            "Your server expires soon".to_string(),
            format!(
                "Hi {name},\n\nyour server for order {reference} expires soon. Renew it to keep it running; an unrenewed \
                 server is switched off at its expiry.\n"
            ),
        ),
        NoticeKind::Renewed => (
            "Your server was renewed".to_string(),
            format!(
                "Hi {name},\n\nyour server for order {reference} was renewed for another month. Thank you!\n"
            ),
        ),
        NoticeKind::Expired => (
            "Your server has expired".to_string(),
            format!(
                "Hi {name},\n\nyour server for order {reference} reached its expiry without a renewal and has expired. \
                 {team}\n"
            ),
        ),
        NoticeKind::Terminated => (
            "Your server has ended".to_string(),
            format!(
                "Hi {name},\n\nyour cancelled service for order {reference} reached its expiry: the server has ended.\n"
            ),
        ),
        // Admin kinds never reach here (routed by audience).
        other => (other.event().to_string(), String::new()),
    };
    Text { subject, body }
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
        let mut low = event(NoticeKind::AdminLowStock, None, None);
        low.detail = Some("package 7 has 1 free address".into());
        let t = render(&low);
        assert_eq!(
            t.subject,
            "[provisioner] Low stock: package 7 has 1 free address"
        );
    }
}
