//! The filters of `GET /druid/indexer/v1/tasks` (`state`, `datasource`, `type`, `max`,
//! `createdTimeInterval`), parsed strictly and applied to the task table.

use super::{RunnerState, TaskStatusPlus, TaskTable};

/// Which tasks `state=` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Waiting,
    Pending,
    Running,
    Complete,
}

impl StateFilter {
    /// Parses Druid's state names, case-insensitively.
    pub fn parse(s: &str) -> Result<StateFilter, QueryError> {
        match s.to_ascii_lowercase().as_str() {
            "waiting" => Ok(StateFilter::Waiting),
            "pending" => Ok(StateFilter::Pending),
            "running" => Ok(StateFilter::Running),
            "complete" => Ok(StateFilter::Complete),
            _ => Err(QueryError::UnknownState(s.to_string())),
        }
    }
}

/// A malformed filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("Invalid state : {0}, valid values are: [pending, waiting, running, complete]")]
    UnknownState(String),
    #[error(
        "invalid createdTimeInterval [{0}]: expected <start>_<end> (or <start>/<end>) with ISO-8601 times, \
         e.g. 2024-01-01T00:00:00Z_2024-01-02T00:00:00Z"
    )]
    BadInterval(String),
    #[error("'{0}' must be a non-negative integer")]
    BadNumber(&'static str),
}

/// A parsed `/tasks` query.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub state: Option<StateFilter>,
    pub datasource: Option<String>,
    pub task_type: Option<String>,
    /// Most complete tasks to return (the most recently created first).
    pub max: Option<usize>,
    /// Created time within `[start, end)`, in ms.
    pub created: Option<(u64, u64)>,
}

/// Parses `start_end` or `start/end` (times before the epoch are refused: tasks have none).
pub fn parse_interval(s: &str) -> Result<(u64, u64), QueryError> {
    let bad = || QueryError::BadInterval(s.to_string());
    let iv = crate::interval::Interval::parse_url(s).map_err(|_| bad())?;
    let start = u64::try_from(iv.start).map_err(|_| bad())?;
    let end = u64::try_from(iv.end).map_err(|_| bad())?;
    Ok((start, end))
}

impl TaskQuery {
    /// Builds a query from URL parameters.
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<TaskQuery, QueryError> {
        let mut q = TaskQuery::default();
        for (k, v) in params {
            match k {
                "state" => q.state = Some(StateFilter::parse(v)?),
                "datasource" => q.datasource = Some(v.to_string()),
                "type" => q.task_type = Some(v.to_string()),
                "max" | "n" => q.max = Some(v.parse().map_err(|_| QueryError::BadNumber("max"))?),
                "createdTimeInterval" => q.created = Some(parse_interval(v)?),
                _ => {}
            }
        }
        Ok(q)
    }

    /// Runs the query: active tasks first (oldest first), then complete tasks (newest first).
    pub fn run(&self, table: &TaskTable) -> Vec<TaskStatusPlus> {
        let matches = |t: &super::Task| {
            self.datasource.as_deref().is_none_or(|d| d == t.spec.datasource)
                && self.task_type.as_deref().is_none_or(|ty| ty == t.spec.task_type)
                && self.created.is_none_or(|(s, e)| t.created_ms >= s && t.created_ms < e)
        };
        let want_runner = |r: RunnerState| match self.state {
            None => true,
            Some(StateFilter::Waiting) => r == RunnerState::Waiting,
            Some(StateFilter::Pending) => r == RunnerState::Pending,
            Some(StateFilter::Running) => r == RunnerState::Running,
            Some(StateFilter::Complete) => false,
        };
        let mut active: Vec<_> = table
            .active()
            .filter(|t| want_runner(t.runner()) && matches(t))
            .collect();
        active.sort_by_key(|t| (t.created_ms, t.created_index));
        let mut out: Vec<TaskStatusPlus> = active.iter().map(|t| t.status_plus()).collect();
        if matches!(self.state, None | Some(StateFilter::Complete)) {
            let mut done: Vec<_> = table.all().filter(|t| !t.is_active() && matches(t)).collect();
            done.sort_by_key(|t| std::cmp::Reverse((t.created_ms, t.created_index)));
            done.truncate(self.max.unwrap_or(usize::MAX));
            out.extend(done.iter().map(|t| t.status_plus()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{NewTask, SHUTDOWN_BY_USER};
    use serde_json::value::RawValue;

    fn task(id: &str, ds: &str, ty: &str) -> NewTask {
        NewTask {
            id: id.into(),
            task_type: ty.into(),
            group_id: id.into(),
            datasource: ds.into(),
            priority: 0,
            payload: RawValue::from_string("{}".into()).unwrap(),
            resource: Default::default(),
            readiness: Default::default(),
            locks: vec![],
        }
    }

    fn table() -> TaskTable {
        let mut t = TaskTable::default();
        t.apply_submit(1, 1_000, task("a", "x", "noop"), None).unwrap();
        t.apply_submit(2, 2_000, task("b", "y", "index"), None).unwrap();
        t.apply_submit(3, 3_000, task("c", "x", "noop"), None).unwrap();
        t.apply_submit(4, 4_000, task("d", "x", "noop"), None).unwrap();
        t.apply_shutdown(5_000, "c", SHUTDOWN_BY_USER);
        t.apply_shutdown(5_000, "d", SHUTDOWN_BY_USER);
        t
    }

    fn ids(q: &str) -> Vec<String> {
        let params: Vec<(&str, &str)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .collect();
        TaskQuery::from_params(params)
            .unwrap()
            .run(&table())
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    #[test]
    fn filters_select_the_right_tasks() {
        assert_eq!(ids(""), vec!["a", "b", "d", "c"]);
        assert_eq!(ids("state=WAITING"), vec!["a", "b"]);
        assert_eq!(ids("state=running"), Vec::<String>::new());
        assert_eq!(ids("state=complete"), vec!["d", "c"]);
        assert_eq!(ids("state=complete&max=1"), vec!["d"]);
        assert_eq!(ids("datasource=x"), vec!["a", "d", "c"]);
        assert_eq!(ids("type=index"), vec!["b"]);
        assert_eq!(
            ids("createdTimeInterval=1970-01-01T00:00:01.500Z_1970-01-01T00:00:03.500Z"),
            vec!["b", "c"]
        );
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(matches!(
            TaskQuery::from_params([("state", "sleeping")]),
            Err(QueryError::UnknownState(_))
        ));
        for bad in [
            "yesterday",
            "2024-01-01",
            "2024-01-02_2024-01-01",
            "2024-13-01_2024-12-01",
            "a_b_c",
        ] {
            assert!(
                matches!(
                    TaskQuery::from_params([("createdTimeInterval", bad)]),
                    Err(QueryError::BadInterval(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            TaskQuery::from_params([("max", "-1")]),
            Err(QueryError::BadNumber(_))
        ));
        assert_eq!(
            parse_interval("2024-01-01/2024-01-02").unwrap().1 - parse_interval("2024-01-01/2024-01-02").unwrap().0,
            86_400_000
        );
    }
}
