use serde::{Deserialize, Serialize};

use super::{JsonObject, Language, SessionId, Timestamp};

/// Where a session is in its life. `initiated` and `active` are open; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Initiated,
    Active,
    Completed,
    Failed,
}

impl SessionStatus {
    pub const OPEN: [SessionStatus; 2] = [SessionStatus::Initiated, SessionStatus::Active];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initiated => "initiated",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Initiated, Self::Active, Self::Completed, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }
}

/// The status a session ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    #[default]
    Completed,
    Failed,
}

impl From<FinalStatus> for SessionStatus {
    fn from(value: FinalStatus) -> Self {
        match value {
            FinalStatus::Completed => SessionStatus::Completed,
            FinalStatus::Failed => SessionStatus::Failed,
        }
    }
}

/// One conversation (a phone call), as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: SessionId,
    pub status: SessionStatus,
    pub language: Option<Language>,
    pub metadata: JsonObject,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// A validated request to create a session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_id: SessionId,
    pub language: Option<Language>,
    pub metadata: JsonObject,
    /// `initiated` or `active`: a session cannot be created closed.
    pub status: SessionStatus,
    pub started_at: Option<Timestamp>,
}

impl NewSession {
    /// Whether a create for an existing session is a retry of the one that made it.
    /// Status and startedAt are not compared: they legitimately move or default.
    pub fn matches(&self, stored: &Session) -> bool {
        self.language == stored.language && self.metadata == stored.metadata
    }

    /// The session this request creates when nothing is stored under its id yet.
    pub fn into_session(self, now: Timestamp) -> Session {
        Session {
            session_id: self.session_id,
            status: self.status,
            language: self.language,
            metadata: self.metadata,
            started_at: self.started_at.unwrap_or(now),
            ended_at: None,
            updated_at: now,
        }
    }
}
