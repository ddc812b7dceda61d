//! Durable Raft storage for a coordinator: the log, the vote and the state machine in one redb
//! database file.
//!
//! [`Store::open`] hands out two handles on the same database, as openraft's storage v2 wants:
//! [`LogStore`] (`RaftLogStorage`: entries, vote, committed and purged log ids) and
//! [`StateMachineStore`] (`RaftStateMachine`: last applied log id, membership, the
//! [`ClusterState`] and the current snapshot). Every write is a single redb write transaction
//! committed with `Durability::Immediate` (fsync) before the call returns. The state machine
//! itself is in memory and reaches the disk as snapshots; after a restart it starts at the last
//! snapshot and openraft re-applies the committed log from there.
//!
//! Entries and state are encoded as JSON: openraft's types and the commands evolve by adding
//! fields, which JSON tolerates.
//!
//! redb calls block. They run inline in the async methods because openraft awaits each storage
//! call from its core task anyway and requires log writes to be serialized; the cost is one
//! fsync per call, which is the point of the call.

use super::{ClusterState, CommandResult, NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Log index → JSON of `Entry<TypeConfig>`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
/// Log store metadata: [`KEY_VOTE`], [`KEY_COMMITTED`], [`KEY_LAST_PURGED`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The current snapshot: [`KEY_SNAPSHOT_META`], [`KEY_SNAPSHOT_DATA`], [`KEY_SNAPSHOT_SEQ`].
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";
/// Counts snapshots built here, so that two snapshots at the same log id still get distinct ids.
const KEY_SNAPSHOT_SEQ: &str = "seq";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type LastMembership = StoredMembership<NodeId, openraft::BasicNode>;
/// What `applied_state` answers: the last applied log id and the last applied membership.
type AppliedState = (Option<LogId<NodeId>>, LastMembership);

/// Errors of the redb-backed store. At the openraft boundary they become `StorageError`s that
/// name what was being read or written; openraft treats every one of them as fatal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the raft store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    // Boxed: `redb::Error` is large, and every store call returns this type.
    #[error("raft store database error: {0}")]
    Db(#[source] Box<redb::Error>),
    #[error("cannot encode {what} for the raft store: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot decode {what} from the raft store: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// redb has one error type per stage of a transaction; all of them join [`redb::Error`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(redb::Error, redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// Reads and decodes one value of a `&str`-keyed table; `None` when it was never written.
fn get_value<T, Tbl>(table: &Tbl, key: &'static str) -> Result<Option<T>, StoreError>
where
    T: DeserializeOwned,
    Tbl: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key)? {
        Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
        None => Ok(None),
    }
}

fn put_value<T: Serialize>(table: &mut redb::Table<&str, &[u8]>, key: &'static str, value: &T) -> Result<(), StoreError> {
    table.insert(key, encode(key, value)?.as_slice())?;
    Ok(())
}

/// Starts a write transaction that fsyncs on commit. `Immediate` is redb's default; it is set
/// explicitly because Raft's safety rests on it (a vote or entry acknowledged but lost would let
/// a node vote twice or forget a committed entry).
fn begin_write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    Ok(txn)
}

/// The raft database of one coordinator.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    sm: StateMachineStore,
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// Opens (or creates) the database file at `path` and makes sure every table exists, so that
    /// read transactions never meet a missing table.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        // A process that just handed `$KILN_HOME` over may still be closing the file: its lock
        // goes with it, within moments.
        let started = std::time::Instant::now();
        let db = loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r.map_err(|e| StoreError::Open { path: path.to_path_buf(), source: Box::new(e.into()) })?,
            }
        };
        let txn = begin_write(&db)?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;
        let db = Arc::new(db);
        Ok(Store { sm: StateMachineStore::open(db.clone())?, db, committed: Arc::default() })
    }

    /// The handle to give `Raft::new` as its log storage.
    pub fn log_store(&self) -> LogStore {
        LogStore { db: self.db.clone(), committed: self.committed.clone() }
    }

    /// The last commit index openraft saved (for `kiln_raft_commit_index`; 0 until the first).
    pub fn committed_index(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed.clone()
    }

    /// The handle to give `Raft::new` as its state machine.
    pub fn state_machine(&self) -> StateMachineStore {
        self.sm.clone()
    }
}

/// The Raft log, vote and log pointers. Cloning is cheap; clones share the database, which is
/// how the log reader handed to replication tasks sees appended entries.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut entries = Vec::new();
        for item in table.range(range)? {
            let (_, bytes) = item?;
            entries.push(decode("log entry", bytes.value())?);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let txn = self.db.begin_read()?;
        let last_purged_log_id: Option<LogId<NodeId>> = get_value(&txn.open_table(META)?, KEY_LAST_PURGED)?;
        let last_entry: Option<Entry<TypeConfig>> = match txn.open_table(LOGS)?.last()? {
            Some((_, bytes)) => Some(decode("log entry", bytes.value())?),
            None => None,
        };
        // With every entry purged, the last log id is the purged one (openraft's contract).
        let last_log_id = last_entry.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let value = get_value(&txn.open_table(META)?, key)?;
        Ok(value)
    }

    fn write_meta<T: Serialize>(&self, key: &'static str, value: &T, durability: Durability) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability);
        put_value(&mut txn.open_table(META)?, key, value)?;
        txn.commit()?;
        Ok(())
    }

    fn append_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), StoreError> {
        let txn = begin_write(&self.db)?;
        {
            let mut table = txn.open_table(LOGS)?;
            for entry in entries {
                table.insert(entry.log_id.index, encode("log entry", &entry)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes entries from `index` on (inclusive).
    fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let txn = begin_write(&self.db)?;
        txn.open_table(LOGS)?.retain_in(index.., |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Records `log_id` as purged and deletes entries up to it, in one transaction so that a
    /// crash cannot leave a hole between the purged pointer and the first entry.
    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), StoreError> {
        let txn = begin_write(&self.db)?;
        put_value(&mut txn.open_table(META)?, KEY_LAST_PURGED, log_id)?;
        txn.open_table(LOGS)?.retain_in(..=log_id.index, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range).map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.log_state().map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, vote, Durability::Immediate).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Kept so that a restarted node re-applies up to the known commit point at once. Losing
        // it in a crash loses nothing (the leader commits those entries again), so it reaches
        // the disk with the next fsync of the log instead of costing one of its own.
        if let Some(c) = &committed {
            self.committed.store(c.index, std::sync::atomic::Ordering::Relaxed);
        }
        self.write_meta(KEY_COMMITTED, &committed, Durability::Eventual).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        // Stored as `Option<LogId>`, so a missing key and a stored `None` both mean "none".
        let committed: Option<Option<LogId<NodeId>>> = self.read_meta(KEY_COMMITTED).map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The commit has fsynced by the time it returns, so the flush callback can fire at once.
        match self.append_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.truncate_from(log_id.index).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.purge_upto(&log_id).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// The applied state in memory: what `apply` changes and what snapshots are made of.
#[derive(Default)]
struct Applied {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    membership: LastMembership,
}

/// The state machine and its snapshot. Cloning is cheap; a clone is the snapshot builder.
///
/// The state lives in memory and reaches the disk as snapshots: applying a batch then costs
/// nothing but the change, however large the state, and durability comes from the log. After a
/// restart the state machine starts at the last snapshot and openraft re-applies the committed
/// entries after it (the log is purged only up to a snapshot).
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    mem: Arc<std::sync::RwLock<Applied>>,
}

impl StateMachineStore {
    fn open(db: Arc<Database>) -> Result<StateMachineStore, StoreError> {
        let mut applied = Applied::default();
        let txn = db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        if let Some(meta) = get_value::<SnapshotMeta<NodeId, openraft::BasicNode>, _>(&table, KEY_SNAPSHOT_META)? {
            if let Some(data) = table.get(KEY_SNAPSHOT_DATA)? {
                applied.state = decode("snapshot data", data.value())?;
            }
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
        }
        drop(table);
        drop(txn);
        Ok(StateMachineStore { db, mem: Arc::new(std::sync::RwLock::new(applied)) })
    }

    fn mem(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        // A panic while holding the lock cannot leave `Applied` half-changed (apply works on a
        // copy of each command), so a poisoned lock is still consistent.
        self.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster state as last applied (a copy).
    pub fn state(&self) -> Result<ClusterState, StoreError> {
        Ok(self.mem().state.clone())
    }

    /// Reads the applied state without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.mem().state)
    }

    /// The index of the last applied entry.
    pub fn last_applied_index(&self) -> u64 {
        self.mem().last_applied.map(|l| l.index).unwrap_or(0)
    }

    fn applied(&self) -> Result<AppliedState, StoreError> {
        let mem = self.mem();
        Ok((mem.last_applied, mem.membership.clone()))
    }

    fn apply_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<Vec<CommandResult>, StoreError> {
        let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
        let mut results = Vec::new();
        for entry in entries {
            mem.last_applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => CommandResult::ok(),
                EntryPayload::Normal(command) => mem.state.apply(&command),
                EntryPayload::Membership(m) => {
                    mem.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResult::ok()
                }
            });
        }
        Ok(results)
    }

    /// Serializes the applied state and stores it as the current snapshot. The state is read
    /// under the lock, so the snapshot's meta always matches its data.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (last_log_id, last_membership, data) = {
            let mem = self.mem();
            (mem.last_applied, mem.membership.clone(), encode("cluster state", &mem.state)?)
        };
        let txn = begin_write(&self.db)?;
        let meta = {
            let mut snap = txn.open_table(SNAPSHOT)?;
            let seq: u64 = get_value(&snap, KEY_SNAPSHOT_SEQ)?.unwrap_or(0) + 1;
            let snapshot_id = match &last_log_id {
                Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
            put_value(&mut snap, KEY_SNAPSHOT_SEQ, &seq)?;
            put_value(&mut snap, KEY_SNAPSHOT_META, &meta)?;
            snap.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
            meta
        };
        txn.commit()?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }

    /// Replaces the state machine with a snapshot received from the leader and keeps the
    /// snapshot as the current one.
    fn install(&self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, data: &[u8]) -> Result<(), StoreError> {
        // Decode before writing anything: a corrupt snapshot must not replace a good state.
        let state: ClusterState = decode("snapshot data", data)?;
        let txn = begin_write(&self.db)?;
        {
            let mut snap = txn.open_table(SNAPSHOT)?;
            put_value(&mut snap, KEY_SNAPSHOT_META, meta)?;
            snap.insert(KEY_SNAPSHOT_DATA, data)?;
        }
        txn.commit()?;
        let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
        *mem = Applied { state, last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(meta) = get_value::<SnapshotMeta<NodeId, openraft::BasicNode>, _>(&table, KEY_SNAPSHOT_META)? else {
            return Ok(None);
        };
        let data = table.get(KEY_SNAPSHOT_DATA)?.map(|bytes| bytes.value().to_vec()).unwrap_or_default();
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        self.build().map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> StorageResult<AppliedState> {
        self.applied().map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries).map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        self.install(meta, &data).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot().map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Command;
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
    use openraft::{BasicNode, CommittedLeaderId};
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A directory removed on drop; the crate has no `tempfile` dependency.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> std::io::Result<TempDir> {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("kiln-raft-store-{}-{n}", std::process::id()));
            // A leftover from an earlier run with the same pid would carry its state in.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            Ok(TempDir(dir))
        }

        fn db(&self) -> PathBuf {
            self.0.join("raft.redb")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn normal(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
        Entry { log_id: log_id(term, 0, index), payload: EntryPayload::Normal(command) }
    }

    fn put_builder(name: &str) -> Command {
        let node = crate::builders::Node { name: name.into(), context: name.into(), platforms: vec![] };
        Command::PutBuilder {
            builder: crate::builders::Builder { name: name.into(), driver: "runc".into(), nodes: vec![node], share_cache: false },
        }
    }

    fn context(name: &str) -> Command {
        Command::RegisterAgent {
            context: crate::builders::Context {
                name: name.into(),
                endpoint: "10.0.0.1:7000".into(),
                native: vec![],
                emulated: vec![],
                slots: 1,
                labels: Default::default(),
                version: "0".into(),
            },
            key: None,
        }
    }

    #[tokio::test]
    async fn log_append_read_truncate_purge_vote_survive_reopen() -> TestResult {
        let dir = TempDir::new()?;
        let entries: Vec<Entry<TypeConfig>> = (1..=10)
            .map(|i| if i % 3 == 0 { normal(1, i, put_builder(&format!("b{i}"))) } else { blank_ent::<TypeConfig>(1, 0, i) })
            .collect();
        {
            let mut log = Store::open(dir.db())?.log_store();
            assert_eq!(log.get_log_state().await?, LogState::default());
            assert_eq!(log.read_vote().await?, None);
            assert_eq!(log.read_committed().await?, None);

            log.blocking_append(entries.clone()).await?;
            assert_eq!(log.try_get_log_entries(1..11).await?, entries);
            let mut reader = log.get_log_reader().await;
            assert_eq!(reader.try_get_log_entries(3..=4).await?, entries[2..4].to_vec());

            log.truncate(log_id(1, 0, 9)).await?;
            log.purge(log_id(1, 0, 2)).await?;
            let vote = Vote::new_committed(2, 1);
            log.save_vote(&vote).await?;
            log.save_committed(Some(log_id(1, 0, 5))).await?;
        }

        let store = Store::open(dir.db())?;
        let mut log = store.log_store();
        let state = log.get_log_state().await?;
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 0, 8)));
        assert_eq!(log.try_get_log_entries(0..100).await?, entries[2..8].to_vec());
        assert_eq!(log.read_vote().await?, Some(Vote::new_committed(2, 1)));
        assert_eq!(log.read_committed().await?, Some(log_id(1, 0, 5)));

        // Purging everything leaves the purged id as the last log id.
        log.purge(log_id(1, 0, 8)).await?;
        let state = log.get_log_state().await?;
        assert_eq!(state.last_log_id, Some(log_id(1, 0, 8)));
        assert!(log.try_get_log_entries(..).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn applied_state_survives_reopen_through_its_snapshot() -> TestResult {
        let dir = TempDir::new()?;
        let members = BTreeSet::from([1u64, 2, 3]);
        {
            let mut sm = Store::open(dir.db())?.state_machine();
            let results = sm
                .apply([
                    membership_ent::<TypeConfig>(1, 0, 1, vec![members.clone()]),
                    normal(1, 2, put_builder("b")),
                    normal(1, 3, context("a1")),
                    normal(1, 4, Command::RemoveContext { name: "nope".into() }),
                    normal(1, 5, Command::PutToken { token_hash: "h".into(), role: "admin".into(), tenant: "t".into() }),
                ])
                .await?;
            assert_eq!(results.len(), 5);
            assert!(results[..3].iter().all(|r| r.ok));
            assert!(!results[3].ok);
            sm.get_snapshot_builder().await.build_snapshot().await?;
        }

        let mut sm = Store::open(dir.db())?.state_machine();
        let (last_applied, membership) = sm.applied_state().await?;
        assert_eq!(last_applied, Some(log_id(1, 0, 5)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 0, 1)));
        assert_eq!(membership.membership(), &openraft::Membership::<NodeId, BasicNode>::new(vec![members], None));
        let state = sm.state()?;
        assert_eq!(state.farm.builders["b"].nodes[0].context, "b");
        assert_eq!(state.farm.contexts["a1"].endpoint, "10.0.0.1:7000");
        assert_eq!(state.tokens["h"].tenant, "t");
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_installs_into_a_fresh_store() -> TestResult {
        let (dir_l, dir_f) = (TempDir::new()?, TempDir::new()?);
        let mut leader = Store::open(dir_l.db())?.state_machine();
        leader
            .apply([
                membership_ent::<TypeConfig>(1, 0, 1, vec![BTreeSet::from([1u64])]),
                normal(1, 2, put_builder("b")),
                normal(1, 3, context("a9")),
            ])
            .await?;
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 0, 3)));
        let current = leader.get_current_snapshot().await?.ok_or("leader has no current snapshot")?;
        assert_eq!(current.meta, snapshot.meta);

        {
            let mut follower = Store::open(dir_f.db())?.state_machine();
            assert!(follower.get_current_snapshot().await?.is_none());
            let mut receiving = follower.begin_receiving_snapshot().await?;
            *receiving = *current.snapshot;
            follower.install_snapshot(&current.meta, receiving).await?;
        }

        // Reopen: the installed state and snapshot are on disk, not only in the handle.
        let mut follower = Store::open(dir_f.db())?.state_machine();
        assert_eq!(follower.state()?, leader.state()?);
        assert_eq!(follower.applied_state().await?, leader.applied_state().await?);
        let installed = follower.get_current_snapshot().await?.ok_or("follower has no current snapshot")?;
        assert_eq!(installed.meta, snapshot.meta);
        assert_eq!(installed.snapshot.into_inner(), snapshot.snapshot.into_inner());

        // A second snapshot at the same log id still gets a new id.
        let again = leader.get_snapshot_builder().await.build_snapshot().await?;
        assert_ne!(again.meta.snapshot_id, snapshot.meta.snapshot_id);
        Ok(())
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_refused_and_state_kept() -> TestResult {
        let dir = TempDir::new()?;
        let mut sm = Store::open(dir.db())?.state_machine();
        sm.apply([normal(1, 1, put_builder("b"))]).await?;
        let before = sm.state()?;
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 0), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "bad".into(),
        };
        let result = sm.install_snapshot(&meta, Box::new(Cursor::new(b"not json".to_vec()))).await;
        assert!(result.is_err());
        assert_eq!(sm.state()?, before);
        assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 0, 1)));
        Ok(())
    }

    /// Builds a fresh store in its own directory for every case of openraft's suite.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachineStore)> {
            let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
            let store = Store::open(dir.db()).map_err(|e| StorageIOError::write(&e))?;
            Ok((dir, store.log_store(), store.state_machine()))
        }
    }

    /// openraft's storage conformance suite. A plain `#[test]`: the suite starts its own runtimes.
    #[test]
    fn openraft_conformance_suite() -> TestResult {
        Suite::test_all(Builder)?;
        Ok(())
    }
}
