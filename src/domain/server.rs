//! The server after it is bought: the OS images SmartVPS installs, the actions a customer or an
//! admin asks for (start, stop, reboot, reinstall, change OS), and what status last said.
//!
//! An action is durable work of the engine, worked under its order's lease: an order is one
//! server, so one lease means never two actions in flight on one server. Each upstream call of
//! an action is recorded before it is sent (`sent_at`, `outcome` empty) and its outcome after,
//! as a purchase is; a call whose outcome is unknown (or whose worker died) is settled by
//! reading status, never by sending it again blindly.

use std::fmt;

use serde::Serialize;

use super::OrderId;
use crate::clock::Timestamp;

/// An OS image SmartVPS installs with `changeos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Os {
    /// Windows Server 2012.
    #[serde(rename = "2012")]
    WindowsServer2012,
    /// Windows Server 2016.
    #[serde(rename = "2016")]
    WindowsServer2016,
    /// Windows Server 2019.
    #[serde(rename = "2019")]
    WindowsServer2019,
    /// Windows Server 2022.
    #[serde(rename = "2022")]
    WindowsServer2022,
    /// Windows 11.
    #[serde(rename = "11")]
    Windows11,
    /// CentOS.
    #[serde(rename = "centos")]
    CentOs,
    /// Ubuntu.
    #[serde(rename = "ubuntu")]
    Ubuntu,
}

impl Os {
    /// Every image, in SmartVPS's order.
    pub const ALL: [Os; 7] = [
        Self::WindowsServer2012,
        Self::WindowsServer2016,
        Self::WindowsServer2019,
        Self::WindowsServer2022,
        Self::Windows11,
        Self::CentOs,
        Self::Ubuntu,
    ];

    /// The value SmartVPS's `changeos` takes, also how orders store it.
    pub fn code(self) -> &'static str {
        match self {
            Self::WindowsServer2012 => "2012",
            Self::WindowsServer2016 => "2016",
            Self::WindowsServer2019 => "2019",
            Self::WindowsServer2022 => "2022",
            Self::Windows11 => "11",
            Self::CentOs => "centos",
            Self::Ubuntu => "ubuntu",
        }
    }

    /// Its readable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::WindowsServer2012 => "Windows Server 2012",
            Self::WindowsServer2016 => "Windows Server 2016",
            Self::WindowsServer2019 => "Windows Server 2019",
            Self::WindowsServer2022 => "Windows Server 2022",
            Self::Windows11 => "Windows 11",
            Self::CentOs => "CentOS",
            Self::Ubuntu => "Ubuntu",
        }
    }

    /// Whether it is a Windows image (its login is `administrator`).
    pub fn is_windows(self) -> bool {
        !matches!(self, Self::CentOs | Self::Ubuntu)
    }

    /// The login SmartVPS's convention implies when status names none.
    pub fn username(self) -> &'static str {
        if self.is_windows() {
            "administrator"
        } else {
            "root"
        }
    }

    /// Parses what a storefront, an admin or a customer sends: the `changeos` code (`2022`) or
    /// the readable name (`Windows Server 2022`), in any case and spacing.
    ///
    /// # Errors
    /// When it is neither, with every accepted value listed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let wanted = squash(text);
        Self::ALL
            .into_iter()
            .find(|os| squash(os.code()) == wanted || squash(os.name()) == wanted)
            .ok_or_else(Self::choices)
    }

    /// The accepted values, for an error message.
    pub fn choices() -> String {
        let list: Vec<String> = Self::ALL
            .iter()
            .map(|os| format!("{} ({})", os.code(), os.name()))
            .collect();
        format!("must be one of {}", list.join(", "))
    }

    /// Which image status's `OS` text names, when it can be told: the code or the readable
    /// name, or a text that names exactly one image by its year or distribution (`Windows
    /// Server 2022 Datacenter`, `Ubuntu 22.04`). `None` when it names none or several.
    pub fn recognise(text: &str) -> Option<Self> {
        if let Ok(os) = Self::parse(text) {
            return Some(os);
        }
        let lower = text.to_ascii_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let has = |w: &str| words.contains(&w);
        let windows = has("windows") || has("win") || lower.starts_with("win");
        let mut found = Vec::new();
        for os in Self::ALL {
            let hit = match os {
                Self::CentOs => has("centos"),
                Self::Ubuntu => has("ubuntu"),
                Self::Windows11 => windows && has("11"),
                _ => has(os.code()),
            };
            if hit {
                found.push(os);
            }
        }
        match found.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lowercase with spaces, dashes and underscores dropped.
fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// What is asked of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "os")]
pub enum ActionKind {
    /// Power on (`start`).
    Start,
    /// Power off (`stop`).
    Stop,
    /// `stop`, then `start`: SmartVPS has no reboot.
    Reboot,
    /// Reinstall the same image (`format`): a new password.
    Reinstall,
    /// Install another image (`changeos`): a new password.
    ChangeOs(Os),
}

impl ActionKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Reboot => "reboot",
            Self::Reinstall => "reinstall",
            Self::ChangeOs(_) => "change_os",
        }
    }

    /// Parses a name as the API and the CLI take it (`change-os` and `change_os` both), with the
    /// image for a change of OS.
    ///
    /// # Errors
    /// An unknown action, a change of OS without a valid image, or an image for another action.
    pub fn parse(name: &str, os: Option<&str>) -> Result<Self, String> {
        let os = os.map(str::trim).filter(|s| !s.is_empty());
        let kind = match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "start" => Self::Start,
            "stop" => Self::Stop,
            "reboot" | "restart" => Self::Reboot,
            "reinstall" | "format" => Self::Reinstall,
            "change_os" | "changeos" => {
                let Some(os) = os else {
                    return Err(format!("change_os needs an os: {}", Os::choices()));
                };
                return Os::parse(os).map(Self::ChangeOs);
            }
            other => {
                return Err(format!(
                    "unknown action `{other}`: must be one of start, stop, reboot, reinstall, change_os"
                ));
            }
        };
        if os.is_some() {
            return Err(format!("{} takes no os", kind.as_str()));
        }
        Ok(kind)
    }

    /// The image, for a change of OS.
    pub fn os(self) -> Option<Os> {
        match self {
            Self::ChangeOs(os) => Some(os),
            _ => None,
        }
    }

    /// Whether it installs an image, which issues a new password.
    pub fn installs(self) -> bool {
        matches!(self, Self::Reinstall | Self::ChangeOs(_))
    }

    /// Its first stage.
    pub fn first_stage(self) -> Stage {
        match self {
            Self::Start => Stage::Start,
            Self::Stop | Self::Reboot => Stage::Stop,
            Self::Reinstall => Stage::Format,
            Self::ChangeOs(os) => Stage::ChangeOs(os),
        }
    }

    /// In words, for timelines and notices.
    pub fn describe(self) -> String {
        match self {
            Self::Start => "start".into(),
            Self::Stop => "stop".into(),
            Self::Reboot => "reboot".into(),
            Self::Reinstall => "reinstall".into(),
            Self::ChangeOs(os) => format!("change OS to {os}"),
        }
    }
}

/// One upstream call of an action, or the wait for an install it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `format`.
    Format,
    /// `changeos`.
    ChangeOs(Os),
    /// The image is being installed: status is polled until a new password is there.
    Install,
}

impl Stage {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Format => "format",
            Self::ChangeOs(_) => "changeos",
            Self::Install => "install",
        }
    }

    /// Parses a stored name (`changeos` takes the action's image).
    pub fn parse(s: &str, os: Option<Os>) -> Option<Self> {
        Some(match s {
            "start" => Self::Start,
            "stop" => Self::Stop,
            "format" => Self::Format,
            "changeos" => Self::ChangeOs(os?),
            "install" => Self::Install,
            _ => return None,
        })
    }
}

/// Where an action is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Waiting for a worker, or between calls.
    Pending,
    /// Done: status confirmed it.
    Done,
    /// Given up: attempts exhausted or the install never finished.
    Failed,
}

impl ActionState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Done, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// How the last upstream call of an action's stage ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "reason")]
pub enum CallOutcome {
    /// SmartVPS said it did it.
    Succeeded,
    /// A definite no: nothing happened.
    Rejected(String),
    /// It may or may not have happened: settled by reading status.
    Unknown(String),
}

impl CallOutcome {
    /// Stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Rejected(_) => "rejected",
            Self::Unknown(_) => "unknown",
        }
    }

    /// The reason, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Succeeded => None,
            Self::Rejected(r) | Self::Unknown(r) => Some(r),
        }
    }

    /// From stored columns.
    pub fn from_parts(kind: &str, reason: Option<String>) -> Option<Self> {
        let reason = reason.unwrap_or_default();
        Some(match kind {
            "succeeded" => Self::Succeeded,
            "rejected" => Self::Rejected(reason),
            "unknown" => Self::Unknown(reason),
            _ => return None,
        })
    }
}

/// An action on an order's server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerAction {
    /// Its id.
    pub id: i64,
    /// The order (the server).
    pub order_id: OrderId,
    /// What was asked.
    pub kind: ActionKind,
    /// Who asked: `customer`, `admin:<name>` or `provisioning` (the ordered OS).
    pub requested_by: String,
    /// Why, when an admin gave a reason.
    pub reason: Option<String>,
    /// When it was asked.
    pub created_at: Timestamp,
    /// Where it is.
    pub state: ActionState,
    /// The current stage.
    #[serde(skip)]
    pub stage: Stage,
    /// Calls of the current stage sent so far.
    pub attempts: u32,
    /// When the current stage's last call was sent (the intent, committed before sending).
    pub sent_at: Option<Timestamp>,
    /// Its outcome; `None` with `sent_at` set means the call was cut off (a crash): unknown.
    pub outcome: Option<CallOutcome>,
    /// When an install was confirmed started (its wait for a new password is bounded from here).
    pub install_started_at: Option<Timestamp>,
    /// A digest of the password before an install, so the new one can be told from it.
    #[serde(skip)]
    pub old_password_digest: Option<String>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How it ended, in words.
    pub result: Option<String>,
}

impl ServerAction {
    /// A new action, not yet stored (`id` 0).
    pub fn new(
        order_id: OrderId,
        kind: ActionKind,
        requested_by: impl Into<String>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: 0,
            order_id,
            kind,
            requested_by: requested_by.into(),
            reason,
            created_at: now,
            state: ActionState::Pending,
            stage: kind.first_stage(),
            attempts: 0,
            sent_at: None,
            outcome: None,
            install_started_at: None,
            old_password_digest: None,
            finished_at: None,
            result: None,
        }
    }

    /// Whether it is still to be worked.
    pub fn is_open(&self) -> bool {
        self.state == ActionState::Pending
    }

    /// Whether the current stage's last call has no definite outcome: it was cut off, or it
    /// timed out, reset or answered 5xx. Status settles it.
    pub fn unsettled(&self) -> bool {
        self.sent_at.is_some()
            && !matches!(
                self.outcome,
                Some(CallOutcome::Succeeded | CallOutcome::Rejected(_))
            )
    }

    /// Moves to `stage`, with no call sent yet.
    pub fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.attempts = 0;
        self.sent_at = None;
        self.outcome = None;
    }

    /// Ends it.
    pub fn finish(&mut self, state: ActionState, result: impl Into<String>, now: Timestamp) {
        self.state = state;
        self.finished_at = Some(now);
        self.result = Some(result.into());
    }
}

/// What status last said about a server, kept so pages show it without calling SmartVPS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerFacts {
    /// `PowerStatus` (`Online`, `Offline`).
    pub power: Option<String>,
    /// `OS` as status names it.
    pub os: Option<String>,
    /// `ExpiryDate`.
    pub expiry: Option<String>,
    /// `ActionStatus`.
    pub action_status: Option<String>,
    /// When status said it.
    pub checked_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_parses_codes_and_readable_names() {
        assert_eq!(Os::parse("2022"), Ok(Os::WindowsServer2022));
        assert_eq!(Os::parse("windows server 2022"), Ok(Os::WindowsServer2022));
        assert_eq!(Os::parse("Windows-11"), Ok(Os::Windows11));
        assert_eq!(Os::parse(" Ubuntu "), Ok(Os::Ubuntu));
        let err = Os::parse("haiku").unwrap_err();
        assert!(err.contains("2022 (Windows Server 2022)"), "{err}");
        assert!(err.contains("ubuntu (Ubuntu)"), "{err}");
    }

    #[test]
    fn status_os_texts_are_recognised_only_when_unambiguous() {
        assert_eq!(Os::recognise("ubuntu"), Some(Os::Ubuntu));
        assert_eq!(Os::recognise("Ubuntu 22.04 LTS"), Some(Os::Ubuntu));
        assert_eq!(
            Os::recognise("Windows Server 2019 Datacenter"),
            Some(Os::WindowsServer2019)
        );
        assert_eq!(Os::recognise("Windows 11 Pro"), Some(Os::Windows11));
        assert_eq!(Os::recognise("2016"), Some(Os::WindowsServer2016));
        assert_eq!(Os::recognise("Debian 12"), None);
        assert_eq!(Os::recognise("Windows 2016 or 2019"), None);
    }

    #[test]
    fn the_login_follows_the_image() {
        assert_eq!(Os::WindowsServer2022.username(), "administrator");
        assert_eq!(Os::Windows11.username(), "administrator");
        assert_eq!(Os::CentOs.username(), "root");
    }

    #[test]
    fn actions_parse_with_their_image() {
        assert_eq!(ActionKind::parse("reboot", None), Ok(ActionKind::Reboot));
        assert_eq!(
            ActionKind::parse("change-os", Some("Windows Server 2022")),
            Ok(ActionKind::ChangeOs(Os::WindowsServer2022))
        );
        assert!(ActionKind::parse("change_os", None).is_err());
        assert!(ActionKind::parse("stop", Some("ubuntu")).is_err());
        assert!(
            ActionKind::parse("explode", None)
                .unwrap_err()
                .contains("start, stop")
        );
    }

    #[test]
    fn a_cut_off_call_is_unsettled_and_a_definite_one_is_not() {
        let mut a = ServerAction::new(
            OrderId::new(),
            ActionKind::Reboot,
            "customer",
            None,
            Timestamp(0),
        );
        assert!(!a.unsettled());
        a.sent_at = Some(Timestamp(1));
        assert!(a.unsettled(), "sent, no outcome: a crash mid-call");
        a.outcome = Some(CallOutcome::Unknown("timeout".into()));
        assert!(a.unsettled());
        a.outcome = Some(CallOutcome::Rejected("error".into()));
        assert!(!a.unsettled());
        a.enter(Stage::Start);
        assert_eq!((a.attempts, a.sent_at, a.outcome.clone()), (0, None, None));
    }
}
