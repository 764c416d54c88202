//! Read-only questions about the metadata, answered from a linearizable read.

use serde::{Deserialize, Serialize};

use crate::command::{Share, UserInfo, Volume};
use crate::names::fold;
use crate::state::MetaState;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    Volumes,
    Shares,
    Users,
    Share { name: String },
    /// Every shadow-copy set, commit attempt, client context and the timer setting.
    Fsrvp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum QueryResult {
    Volumes(Vec<Volume>),
    Shares(Vec<Share>),
    Users(Vec<UserInfo>),
    Share(Option<Share>),
    Fsrvp(crate::fsrvp::FsrvpState),
}

impl Query {
    /// Answers from `state`; lists are sorted by folded name for stable output.
    pub fn answer(&self, state: &MetaState) -> QueryResult {
        match self {
            Query::Volumes => {
                let mut v: Vec<Volume> = state.volumes.values().cloned().collect();
                v.sort_by_key(|v| fold(&v.name));
                QueryResult::Volumes(v)
            }
            Query::Shares => QueryResult::Shares(state.shares.values().cloned().collect()),
            Query::Users => QueryResult::Users(state.users.values().map(UserInfo::from).collect()),
            Query::Share { name } => QueryResult::Share(state.shares.get(&fold(name)).cloned()),
            Query::Fsrvp => QueryResult::Fsrvp(state.fsrvp.clone()),
        }
    }
}
