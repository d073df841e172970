//! Email over SMTP (lettre): the customer's notices to the order's address, admin alerts to the
//! configured admin addresses.
//!
//! Transport security is chosen explicitly: `starttls` (submission, port 587) and `tls`
//! (implicit TLS, port 465) verify the server's certificate and never fall back to plain text;
//! `none` is for a relay on this machine only (the configuration refuses it for other hosts),
//! because the "ready" email carries the customer's password.
//!
//! Each message's `Message-ID` is derived from the delivery's idempotency key, so a resend after
//! a crash is recognisable as the same message.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials as SmtpCredentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{Event, Notifier, NotifyError, templates};
use crate::domain::{Audience, NoticeKind};

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: a relay on this machine only.
    None,
}

impl SmtpTls {
    /// The conventional port.
    pub fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }

    /// Parses the config value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "starttls" => Some(Self::StartTls),
            "tls" => Some(Self::Tls),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// SMTP settings.
#[derive(Clone)]
pub struct EmailSettings {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connection security.
    pub tls: SmtpTls,
    /// Login, when the server wants one.
    pub username: Option<String>,
    /// Password; never logged.
    pub password: Option<SecretString>,
    /// The From address, e.g. `Provisioner <noreply@example.com>`.
    pub from: Mailbox,
    /// Where admin alerts go; none means no admin email.
    pub admin_to: Vec<Mailbox>,
    /// Bound on each SMTP command.
    pub timeout: Duration,
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username.as_ref().map(|_| "[redacted]"))
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("from", &self.from.to_string())
            .field(
                "admin_to",
                &self
                    .admin_to
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Sends one audience's notices by email.
pub struct EmailNotifier {
    /// `email:customer` or `email:admin`.
    channel: &'static str,
    /// Whose notices.
    audience: Audience,
    /// Shared by both audiences; opens a connection per message (notices are rare).
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// From.
    from: Mailbox,
    /// Admin recipients (unused for the customer channel).
    admin_to: Vec<Mailbox>,
}

impl EmailNotifier {
    /// The customer channel and, when admin addresses are configured, the admin channel.
    ///
    /// # Errors
    /// When the transport cannot be built (a host lettre cannot use for TLS).
    pub fn channels(settings: &EmailSettings) -> Result<Vec<Arc<dyn Notifier>>, NotifyError> {
        let transport = transport(settings)?;
        let mut out: Vec<Arc<dyn Notifier>> = vec![Arc::new(Self {
            channel: "email:customer",
            audience: Audience::Customer,
            transport: transport.clone(),
            from: settings.from.clone(),
            admin_to: Vec::new(),
        })];
        if !settings.admin_to.is_empty() {
            out.push(Arc::new(Self {
                channel: "email:admin",
                audience: Audience::Admin,
                transport,
                from: settings.from.clone(),
                admin_to: settings.admin_to.clone(),
            }));
        }
        Ok(out)
    }

    fn message(&self, event: &Event) -> Result<Message, NotifyError> {
        let text = templates::render(event);
        let to: Mailboxes = match self.audience {
            Audience::Customer => {
                let order = event
                    .order
                    .as_ref()
                    .ok_or_else(|| NotifyError("a customer email needs an order".into()))?;
                let address = order
                    .customer
                    .email
                    .parse()
                    .map_err(|e| NotifyError(format!("customer address: {e}")))?;
                Mailbox::new(Some(order.customer.name.clone()), address).into()
            }
            Audience::Admin => self.admin_to.iter().cloned().collect(),
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(text.subject)
            .message_id(Some(message_id(&event.key, &self.from)))
            .header(ContentType::TEXT_PLAIN);
        for mailbox in to {
            builder = builder.to(mailbox);
        }
        builder
            .body(text.body)
            .map_err(|e| NotifyError(format!("building the message: {e}")))
    }
}

/// `text` with every recipient address in it (in any letter case) replaced by `<recipient>`.
fn without_recipients(text: &str, recipients: &[String]) -> String {
    let mut out = text.to_string();
    for address in recipients.iter().filter(|a| !a.is_empty()) {
        let needle = address.to_ascii_lowercase();
        while let Some(at) = out.to_ascii_lowercase().find(&needle) {
            out.replace_range(at..at + needle.len(), "<recipient>");
        }
    }
    out
}

/// `<key, made safe for a msg-id>@<the From domain>`.
fn message_id(key: &str, from: &Mailbox) -> String {
    let left: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{left}@{}>", from.email.domain())
}

fn transport(s: &EmailSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let builder = match s.tls {
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            s.host.clone(),
        )),
    }
    .map_err(|e| NotifyError(format!("SMTP set-up for {}: {e}", s.host)))?;
    let mut builder = builder.port(s.port).timeout(Some(s.timeout));
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.credentials(SmtpCredentials::new(
            user.clone(),
            password.expose_secret().to_string(),
        ));
    }
    Ok(builder.build())
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn channel(&self) -> &str {
        self.channel
    }

    fn accepts(&self, kind: NoticeKind) -> bool {
        // "Back in progress" is for the storefront; the customer hears when there is news.
        kind.audience() == self.audience && kind != NoticeKind::Resumed
    }

    fn wants_credentials(&self) -> bool {
        // The customer's "ready" email is how they get their login.
        self.audience == Audience::Customer
    }

    async fn send(&self, event: &Event) -> Result<(), NotifyError> {
        let message = self.message(event)?;
        let recipients: Vec<String> = message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        // lettre's errors name the stage (connection, TLS, a permanent SMTP reply), never the
        // message or the password; but a server's refusal often quotes the recipient, and this
        // text is logged at warn and shown on the dashboard, where customer addresses do not go.
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError(without_recipients(&format!("SMTP: {e}"), &recipients)))
    }
}

#[cfg(test)]
mod tests {
    use super::without_recipients;

    #[test]
    fn a_refusal_quoting_the_recipient_is_logged_without_it() {
        let text = "SMTP: permanent error (550): 5.1.1 <Ann.Lee@Example.com>: Recipient address rejected; ann.lee@example.com unknown";
        let out = without_recipients(text, &["ann.lee@example.com".to_string()]);
        assert_eq!(
            out,
            "SMTP: permanent error (550): 5.1.1 <<recipient>>: Recipient address rejected; <recipient> unknown"
        );
        assert_eq!(
            without_recipients("SMTP: timed out", &[]),
            "SMTP: timed out"
        );
    }
}
