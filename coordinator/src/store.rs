//! The experiment store: an embedded SQLite database holding submitted configs, their state,
//! step summaries and the sampler cursor. The coordinator is its only user.

use std::path::Path;

use platter_proto::v1::{Experiment, ExperimentState, StepSummary};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS experiments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    config_toml TEXT NOT NULL,
    state INTEGER NOT NULL,
    steps_total INTEGER NOT NULL,
    steps_completed INTEGER NOT NULL DEFAULT 0,
    policy_version INTEGER NOT NULL DEFAULT 0,
    sampler_cursor INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    submitted_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS step_summaries (
    experiment_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    summary BLOB NOT NULL,
    PRIMARY KEY (experiment_id, step)
);
";

/// The store (one connection; callers serialise access).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_to_experiment(row: &rusqlite::Row<'_>) -> rusqlite::Result<Experiment> {
    Ok(Experiment {
        experiment_id: row.get(0)?,
        name: row.get(1)?,
        config_toml: row.get(2)?,
        state: row.get(3)?,
        steps_total: row.get::<_, i64>(4)?.max(0) as u64,
        steps_completed: row.get::<_, i64>(5)?.max(0) as u64,
        policy_version: row.get::<_, i64>(6)?.max(0) as u64,
        sampler_cursor: row.get::<_, i64>(7)?.max(0) as u64,
        error: row.get(8)?,
        submitted_unix_ms: row.get(9)?,
    })
}

const COLUMNS: &str = "id, name, config_toml, state, steps_total, steps_completed, policy_version, sampler_cursor, error, submitted_unix_ms";

impl Store {
    /// Opens (or creates) the database at `path`; `:memory:` for a throwaway store.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| Error::store(format!("opening {}", path.display()), e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| Error::store("creating the schema", e))?;
        Ok(Self { conn })
    }

    /// Stores a new queued experiment and returns it.
    pub fn insert(
        &self,
        name: &str,
        config_toml: &str,
        steps_total: u64,
        now_ms: i64,
    ) -> Result<Experiment> {
        let next: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments",
                [],
                |r| r.get(0),
            )
            .map_err(|e| Error::store("allocating an id", e))?;
        let id = format!("exp-{next:05}");
        self.conn
            .execute(
                "INSERT INTO experiments (id, name, config_toml, state, steps_total, submitted_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, name, config_toml, ExperimentState::Queued as i32, i64_of(steps_total), now_ms],
            )
            .map_err(|e| Error::store("inserting an experiment", e))?;
        self.get(&id)
    }

    /// One experiment; `NotFound` names the id.
    pub fn get(&self, id: &str) -> Result<Experiment> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM experiments WHERE id = ?1"),
                [id],
                row_to_experiment,
            )
            .optional()
            .map_err(|e| Error::store("reading an experiment", e))?
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Every experiment, oldest first.
    pub fn list(&self) -> Result<Vec<Experiment>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM experiments ORDER BY seq"))
            .map_err(|e| Error::store("listing experiments", e))?;
        let rows = stmt
            .query_map([], row_to_experiment)
            .map_err(|e| Error::store("listing experiments", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("listing experiments", e))
    }

    /// The experiment to run next: an interrupted running one first, then the oldest queued.
    pub fn next_runnable(&self) -> Result<Option<Experiment>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM experiments WHERE state IN (?1, ?2) ORDER BY state DESC, seq LIMIT 1"),
                params![ExperimentState::Running as i32, ExperimentState::Queued as i32],
                row_to_experiment,
            )
            .optional()
            .map_err(|e| Error::store("picking the next experiment", e))
    }

    /// Queued experiments ahead of `id` (and the running one).
    pub fn queue_position(&self, id: &str) -> Result<u32> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM experiments WHERE state IN (?1, ?2) AND seq < (SELECT seq FROM experiments WHERE id = ?3)",
                params![ExperimentState::Running as i32, ExperimentState::Queued as i32, id],
                |r| r.get(0),
            )
            .map_err(|e| Error::store("computing a queue position", e))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Experiments waiting to run.
    pub fn queued_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM experiments WHERE state = ?1",
                [ExperimentState::Queued as i32],
                |r| r.get(0),
            )
            .map_err(|e| Error::store("counting queued experiments", e))?;
        Ok(n.max(0) as u64)
    }

    /// Sets the state (and error text).
    pub fn set_state(&self, id: &str, state: ExperimentState, error: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE experiments SET state = ?1, error = ?2 WHERE id = ?3",
                params![state as i32, error, id],
            )
            .map_err(|e| Error::store("updating a state", e))?;
        Ok(())
    }

    /// Records a finished step atomically: its summary, the step count, the policy version and
    /// the sampler cursor.
    pub fn record_step(
        &mut self,
        id: &str,
        summary: &StepSummary,
        sampler_cursor: u64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::store("starting a transaction", e))?;
        tx.execute(
            "INSERT OR REPLACE INTO step_summaries (experiment_id, step, summary) VALUES (?1, ?2, ?3)",
            params![id, i64_of(summary.step), summary.encode_to_vec()],
        )
        .map_err(|e| Error::store("storing a step summary", e))?;
        tx.execute(
            "UPDATE experiments SET steps_completed = ?1, policy_version = ?2, sampler_cursor = ?3 WHERE id = ?4",
            params![i64_of(summary.step + 1), i64_of(summary.policy_version), i64_of(sampler_cursor), id],
        )
        .map_err(|e| Error::store("advancing an experiment", e))?;
        tx.commit()
            .map_err(|e| Error::store("committing a step", e))
    }

    /// Stored step summaries of `id` from `from_step` on.
    pub fn steps(&self, id: &str, from_step: u64) -> Result<Vec<StepSummary>> {
        let mut stmt = self
            .conn
            .prepare("SELECT summary FROM step_summaries WHERE experiment_id = ?1 AND step >= ?2 ORDER BY step")
            .map_err(|e| Error::store("reading step summaries", e))?;
        let blobs = stmt
            .query_map(params![id, i64_of(from_step)], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| Error::store("reading step summaries", e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("reading step summaries", e))?;
        blobs
            .iter()
            .map(|b| {
                StepSummary::decode(b.as_slice())
                    .map_err(|e| Error::Corrupt(format!("step summary of {id}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_steps_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        {
            let mut s = Store::open(&path).unwrap();
            let a = s.insert("a", "name = \"a\"", 3, 1).unwrap();
            let b = s.insert("b", "name = \"b\"", 2, 2).unwrap();
            assert_eq!(
                (a.experiment_id.as_str(), b.experiment_id.as_str()),
                ("exp-00001", "exp-00002")
            );
            assert_eq!(s.queue_position(&b.experiment_id).unwrap(), 1);
            assert_eq!(
                s.next_runnable().unwrap().unwrap().experiment_id,
                "exp-00001"
            );
            s.set_state("exp-00002", ExperimentState::Running, "")
                .unwrap();
            // An interrupted running experiment resumes before older queued ones.
            assert_eq!(
                s.next_runnable().unwrap().unwrap().experiment_id,
                "exp-00002"
            );
            let summary = StepSummary {
                experiment_id: "exp-00002".into(),
                step: 0,
                policy_version: 1,
                kept_groups: 4,
                ..Default::default()
            };
            s.record_step("exp-00002", &summary, 12).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let b = s.get("exp-00002").unwrap();
        assert_eq!(
            (b.steps_completed, b.policy_version, b.sampler_cursor),
            (1, 1, 12)
        );
        assert_eq!(s.steps("exp-00002", 0).unwrap()[0].kept_groups, 4);
        assert!(s.steps("exp-00002", 1).unwrap().is_empty());
        assert_eq!(s.list().unwrap().len(), 2);
        assert!(matches!(s.get("nope"), Err(Error::NotFound(_))));
    }
}
