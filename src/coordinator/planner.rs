//! The historical-management planner: one pure function from the replicated state to the
//! loads, drops and metadata changes one Coordinator run proposes.
//!
//! One pass walks every segment in table order together with every Historical's replicas
//! (both are ordered by datasource and segment key, so the pass is a merge and needs no hash
//! of the cluster's replicas), and for each segment:
//!
//! - unused, deleted, overshadowed-and-marked, a tombstone, or matched by a drop rule: its
//!   replicas are dropped (a drop rule and a covered overshadowed segment are also marked
//!   unused, as Druid's Coordinator does);
//! - matched by a load rule: each tier gets the rule's replica count, each replica on the
//!   Historical of the tier with room where Druid's `cost` is lowest (see [`super::cost`]:
//!   away from segments close in time, twice as far from the same datasource's), never two on
//!   one Historical; replicas beyond the
//!   first count against `replicationThrottleLimit`; a Historical's loads in flight are capped
//!   by `maxSegmentsInNodeLoadingQueue` (0: no cap); with `smartSegmentLoading` (the default),
//!   as in Druid, the throttle is 5% of the used segments (at least 100) and queues are not
//!   capped; surplus replicas are dropped, loading ones
//!   first, then those on decommissioning Historicals, then where they cost most; replicas on tiers
//!   the rule does not name are dropped once the named tiers hold theirs;
//! - matched by a broadcast rule: one replica on every Historical;
//! - matched by no rule: left as it is, and counted.
//!
//! Placement, surplus drops and balancing follow the dynamic config's `balancerStrategy`:
//! `cost` as described here; `diskNormalized`, Druid's, divides each cost by the Historical's
//! replica count and multiplies it by the share of its cache in use (counting a destination as
//! it would be with the segment), so that larger caches take more; `random`, Druid's, places on a Historical
//! with room chosen by a hash of segment and Historical, drops in that hash's order and does not
//! balance.
//!
//! Then each tier whose Historicals have nothing loading or dropping is balanced as Druid's
//! `cost` strategy does: up to `maxSegmentsToMove` loaded replicas, sampled uniformly from the
//! tier (reservoir sampling during the pass, seeded by the run's time), each move to the
//! Historical where the segment costs least if that is cheaper than where it is. Every move
//! lowers the tier's total cost, so balancing settles. A move is a load that names the replica
//! it replaces; that replica is dropped once the new one is loaded.
//!
//! Druid waits `millisToWaitBeforeDeleting` after gaining leadership before it marks
//! overshadowed segments unused, because a new Druid leader does not yet know what is loaded.
//! Here what is loaded is replicated state, so a new leader knows at once and needs no wait.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::iter::Peekable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::BalancerStrategy;
use super::cost::{interval_cost, Profile};
use super::load::{DropRequest, HistoricalRecord, LoadRequest, LoadTable, Replica, SegmentRef};
use super::rules::Action;
use super::{CoordinatorState, DEFAULT_RULES};
use crate::interval::{MAX_INSTANT, MIN_INSTANT};
use crate::segments::segment::ShardKind;
use crate::segments::{Datasource, SegmentKey, SegmentTable, StoredSegment};

/// How much costlier than the cheapest a Historical may be and still take a new replica; and
/// how much cheaper a Historical must be for balancing to move a replica there.
const COST_SLACK: f64 = 0.10;

/// How long a Historical that failed to load a segment is not asked to load it again.
pub const FAILED_RETRY_MS: i64 = 60_000;

/// What one run found and decided, for `/druid/coordinator/v1/duties`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStats {
    pub used_segments: u64,
    pub overshadowed: u64,
    /// Segments no rule matched (left as they are).
    pub unmatched: u64,
    pub assigned: u64,
    pub dropped: u64,
    pub moved: u64,
    /// Replicas a rule asks for that no Historical had room (or queue) for.
    pub unplaceable: u64,
    /// Replicas held back by `replicationThrottleLimit`.
    pub throttled: u64,
    pub marked_unused_by_rule: u64,
    pub marked_unused_overshadowed: u64,
    pub marked_unused_tombstones: u64,
    /// Tiers rules name that no Historical serves.
    pub unknown_tiers: BTreeSet<String>,
}

/// The decisions of one run.
#[derive(Debug, Default)]
pub struct Plan {
    pub loads: Vec<LoadRequest>,
    pub drops: Vec<DropRequest>,
    /// Segments to mark unused, by datasource.
    pub unused: BTreeMap<String, Vec<SegmentKey>>,
    pub stats: RunStats,
}

/// A Historical during planning: its record and the bytes and loads it will have once the
/// plan so far is applied.
struct Server<'a> {
    rec: &'a HistoricalRecord,
    /// Bytes the cache must find room for (drops in flight included).
    committed: u64,
    queue: u64,
    decommissioning: bool,
    /// Has loads or drops in flight or planned: not balanced this run.
    busy: bool,
    /// Replicas loading or loaded once the plan so far is applied, and their bytes (what
    /// `diskNormalized` divides and multiplies by).
    held: u64,
    held_bytes: u64,
}

impl Server<'_> {
    fn free(&self) -> u64 {
        self.rec.server.max_size.saturating_sub(self.committed)
    }
}

type Cursor<'a> = Peekable<imbl::ordmap::Iter<'a, SegmentRef, Replica, imbl::shared_ptr::DefaultSharedPtr>>;

/// Cost profiles kept from one run to the next (by the leader's duty): a Historical whose
/// replicas are unchanged since (the very same persistent map) reuses them instead of
/// rebuilding them from its replicas.
#[derive(Default)]
pub struct CostCache {
    servers: HashMap<String, CachedProfiles>,
}

struct CachedProfiles {
    replicas: imbl::OrdMap<SegmentRef, Replica>,
    all: Option<Arc<Profile>>,
    by_ds: HashMap<Arc<str>, Arc<Profile>>,
}

impl CostCache {
    /// Keeps only what is still true of `records`.
    fn keep_current(&mut self, records: &[&HistoricalRecord]) {
        let current: HashMap<&str, &HistoricalRecord> = records.iter().map(|r| (r.server.host.as_str(), *r)).collect();
        self.servers.retain(|host, c| {
            current
                .get(host.as_str())
                .is_some_and(|r| r.replicas().ptr_eq(&c.replicas))
        });
    }

    fn entry(&mut self, rec: &HistoricalRecord) -> &mut CachedProfiles {
        self.servers
            .entry(rec.server.host.clone())
            .or_insert_with(|| CachedProfiles {
                replicas: rec.replicas().clone(),
                all: None,
                by_ds: HashMap::new(),
            })
    }
}

/// Druid's cost of a segment on each Historical, with the plan so far applied. Profiles are
/// built when first asked for (or taken from the cache), from the Historical's wanted replicas,
/// then given the changes planned before.
struct Costs<'a> {
    records: Vec<&'a HistoricalRecord>,
    cache: CostCache,
    /// Per Historical: all its segments.
    all: Vec<Option<Arc<Profile>>>,
    /// Per Historical and datasource: that datasource's segments (their cost counts twice).
    by_ds: HashMap<(usize, Arc<str>), Arc<Profile>>,
    /// Replicas the plan adds (+1) or takes away (-1), per Historical and datasource.
    changes: Vec<HashMap<Arc<str>, Vec<Change>>>,
}

/// One replica of an interval added (+1) or taken away (-1).
type Change = ((i64, i64), i32);

impl Costs<'_> {
    fn change(&mut self, i: usize, seg: &SegmentRef, delta: i32) {
        let iv = (seg.key.start, seg.key.end);
        if let Some(p) = &mut self.all[i] {
            Arc::make_mut(p).add(iv, delta);
        }
        if let Some(p) = self.by_ds.get_mut(&(i, seg.datasource.clone())) {
            Arc::make_mut(p).add(iv, delta);
        }
        self.changes[i]
            .entry(seg.datasource.clone())
            .or_default()
            .push((iv, delta));
    }

    /// What `seg` costs on Historical `i`; `holds`: `i` holds it already (its cost with itself
    /// is taken off, as Druid's).
    fn cost(&mut self, i: usize, seg: &SegmentRef, holds: bool) -> f64 {
        let Costs {
            records,
            cache,
            all,
            by_ds,
            changes,
        } = self;
        let iv = (seg.key.start, seg.key.end);
        let wanted = |(r, rep): (&SegmentRef, &Replica)| rep.wanted().then_some((r.key.start, r.key.end));
        let all = all[i].get_or_insert_with(|| {
            let cached = cache.entry(records[i]);
            let mut p = cached
                .all
                .get_or_insert_with(|| Arc::new(Profile::build(records[i].replicas().iter().filter_map(wanted))))
                .clone();
            for (iv, d) in changes[i].values().flatten() {
                Arc::make_mut(&mut p).add(*iv, *d);
            }
            p
        });
        let mut cost = all.cost(iv);
        let same = by_ds.entry((i, seg.datasource.clone())).or_insert_with(|| {
            let cached = cache.entry(records[i]);
            let from = SegmentRef {
                datasource: seg.datasource.clone(),
                key: SegmentKey {
                    start: i64::MIN,
                    end: i64::MIN,
                    version: "".into(),
                    partition: 0,
                },
            };
            let mut p = cached
                .by_ds
                .entry(seg.datasource.clone())
                .or_insert_with(|| {
                    Arc::new(Profile::build(
                        records[i]
                            .replicas()
                            .range(from..)
                            .take_while(|(r, _)| r.datasource == seg.datasource)
                            .filter_map(wanted),
                    ))
                })
                .clone();
            for (iv, d) in changes[i].get(&seg.datasource).into_iter().flatten() {
                Arc::make_mut(&mut p).add(*iv, *d);
            }
            p
        });
        cost += same.cost(iv);
        if holds {
            cost -= 2.0 * interval_cost(iv, iv);
        }
        cost
    }
}

/// Up to `k` items drawn uniformly from a stream (reservoir sampling).
struct Reservoir<T> {
    k: usize,
    seen: usize,
    items: Vec<T>,
}

impl<T> Reservoir<T> {
    fn offer(&mut self, rng: &mut SmallRng, item: impl FnOnce() -> T) {
        self.seen += 1;
        if self.items.len() < self.k {
            self.items.push(item());
        } else {
            let j = rng.random_range(0..self.seen);
            if j < self.k {
                self.items[j] = item();
            }
        }
    }
}

/// The planner's working state.
struct Planner<'a> {
    servers: Vec<Server<'a>>,
    tiers: BTreeMap<&'a str, Vec<usize>>,
    costs: Costs<'a>,
    /// Segments each two Historicals of one tier both hold (wanted), as far as the pass has
    /// seen them and the plan has placed them.
    pairs: Vec<Vec<u32>>,
    queue_cap: u64,
    throttle: u64,
    replicated: HashMap<String, u64>,
    strategy: BalancerStrategy,
    now: i64,
    plan: Plan,
}

/// Plans one historical-management run at leader time `now_ms`.
pub fn plan(segments: &SegmentTable, coordinator: &CoordinatorState, servers: &LoadTable, now_ms: i64) -> Plan {
    plan_cached(segments, coordinator, servers, now_ms, &mut CostCache::default())
}

/// [`plan`], reusing the cost profiles of Historicals unchanged since the run that filled
/// `cache` (the plan is the same either way).
pub fn plan_cached(
    segments: &SegmentTable,
    coordinator: &CoordinatorState,
    servers: &LoadTable,
    now_ms: i64,
    cache: &mut CostCache,
) -> Plan {
    plan_until(segments, coordinator, servers, now_ms, cache, &AtomicBool::new(false)).unwrap_or_default()
}

/// Segments planned between two looks at the stop flag.
const STOP_CHECK_EVERY: u64 = 4096;

/// [`plan_cached`], given up (`None`) soon after `stop` is set: a leader that lost its
/// leadership abandons its plan rather than finishing minutes of work no one will propose.
pub fn plan_until(
    segments: &SegmentTable,
    coordinator: &CoordinatorState,
    servers: &LoadTable,
    now_ms: i64,
    cache: &mut CostCache,
    stop: &AtomicBool,
) -> Option<Plan> {
    let config = &coordinator.dynamic_config;
    let records: Vec<&HistoricalRecord> = servers.serving().collect();
    let mut kept = std::mem::take(cache);
    kept.keep_current(&records);
    let mut p = Planner {
        servers: records
            .iter()
            .map(|r| Server {
                rec: r,
                committed: r.committed_bytes(),
                queue: r.loading(),
                decommissioning: config.decommissioning_nodes.contains(&r.server.host),
                busy: r.loading() > 0 || r.dropping() > 0,
                held: r.loading() + r.loaded(),
                held_bytes: r.held_bytes(),
            })
            .collect(),
        tiers: BTreeMap::new(),
        costs: Costs {
            records: records.clone(),
            cache: kept,
            all: vec![None; records.len()],
            by_ds: HashMap::new(),
            changes: vec![HashMap::new(); records.len()],
        },
        pairs: vec![vec![0; records.len()]; records.len()],
        queue_cap: match config.max_segments_in_node_loading_queue {
            _ if config.smart_segment_loading => u64::MAX,
            0 => u64::MAX,
            n => u64::from(n),
        },
        throttle: if config.smart_segment_loading {
            smart_throttle(segments)
        } else {
            u64::from(config.replication_throttle_limit)
        },
        replicated: HashMap::new(),
        strategy: config.balancer_strategy,
        now: now_ms,
        plan: Plan::default(),
    };
    for (i, r) in records.iter().enumerate() {
        p.tiers.entry(r.server.tier.as_str()).or_default().push(i);
    }
    // Loaded replicas that balancing may move, sampled per tier.
    let tier_index: HashMap<&str, usize> = p.tiers.keys().enumerate().map(|(n, t)| (*t, n)).collect();
    let tier_of: Vec<usize> = records.iter().map(|r| tier_index[r.server.tier.as_str()]).collect();
    // Seeded by the time and what the Historicals hold: deterministic for one state, and a
    // new sample once moves change it (or time passes).
    let mut seed = std::collections::hash_map::DefaultHasher::new();
    now_ms.hash(&mut seed);
    for r in &records {
        (&r.server.host, r.loaded(), r.committed_bytes()).hash(&mut seed);
    }
    let mut rng = SmallRng::seed_from_u64(seed.finish());
    let mut samples: Vec<Reservoir<(SegmentRef, usize, u64)>> = (0..p.tiers.len())
        .map(|_| Reservoir {
            k: config.max_segments_to_move as usize,
            seen: 0,
            items: Vec::new(),
        })
        .collect();
    let mut cursors: Vec<Cursor<'_>> = records.iter().map(|r| r.replicas().iter().peekable()).collect();
    let defaults = coordinator.rules_of(DEFAULT_RULES);
    let mut reps: Vec<(usize, &Replica)> = Vec::new();
    let mut walked = 0u64;
    for (name, ds) in segments.datasources() {
        let mut same_name: Vec<*const u8> = vec![std::ptr::null(); cursors.len()];
        let own = coordinator.rules_of(name);
        // Each rule's action, worked out once per datasource rather than once per segment.
        let actions: Vec<Action> = own.iter().chain(defaults.iter()).map(|r| r.action()).collect();
        let overshadowed = ds.overshadowed();
        let mut available: HashMap<&SegmentKey, bool> = HashMap::new();
        let mut shadowed: Vec<(&SegmentKey, Vec<(usize, &Replica)>)> = Vec::new();
        for (key, seg) in ds.all() {
            walked += 1;
            if walked % STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
                return None;
            }
            reps.clear();
            for (i, c) in cursors.iter_mut().enumerate() {
                while let Some((r, rep)) = c.peek() {
                    // A Historical's replicas of one datasource share its name (see
                    // `HistoricalRecord::canonical`): compared once, then by pointer.
                    let ptr = Arc::as_ptr(&r.datasource) as *const u8;
                    let by_name = if same_name[i] == ptr {
                        std::cmp::Ordering::Equal
                    } else {
                        let o = (*r.datasource).cmp(name.as_str());
                        if o == std::cmp::Ordering::Equal {
                            same_name[i] = ptr;
                        }
                        o
                    };
                    match by_name.then_with(|| r.key.cmp(key)) {
                        std::cmp::Ordering::Less => {
                            p.drop_stale(i, r, rep);
                            c.next();
                        }
                        std::cmp::Ordering::Equal => {
                            reps.push((i, rep));
                            c.next();
                            break;
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
            }
            let segment = || SegmentRef {
                datasource: name.as_str().into(),
                key: key.clone(),
            };
            if !seg.used {
                p.drop_all(&reps, &segment());
                continue;
            }
            p.plan.stats.used_segments += 1;
            for (n, (a, ra)) in reps.iter().enumerate() {
                for (b, rb) in &reps[n + 1..] {
                    if ra.wanted() && rb.wanted() && tier_of[*a] == tier_of[*b] {
                        p.pair(*a, *b, 1);
                    }
                }
            }
            if config.max_segments_to_move > 0 && config.balancer_strategy != BalancerStrategy::Random {
                for (i, rep) in &reps {
                    if matches!(rep, Replica::Loaded { moved_from: None, .. }) && !p.servers[*i].decommissioning {
                        samples[tier_of[*i]].offer(&mut rng, || (segment(), *i, seg.size));
                    }
                }
            }
            let tombstone = seg.shard_spec.kind == ShardKind::Tombstone;
            if overshadowed.contains(key) {
                p.plan.stats.overshadowed += 1;
                shadowed.push((key, reps.clone()));
                continue;
            }
            if tombstone {
                p.drop_all(&reps, &segment());
                if (key.start == MIN_INSTANT || key.end == MAX_INSTANT) && !covers_data(ds, key) {
                    p.plan.stats.marked_unused_tombstones += 1;
                    p.plan.unused.entry(name.clone()).or_default().push(key.clone());
                }
                continue;
            }
            let interval = key.interval();
            let matched = own
                .iter()
                .chain(defaults.iter())
                .zip(&actions)
                .find(|(r, _)| r.applies_to(&interval, now_ms));
            let Some((_, action)) = matched else {
                p.plan.stats.unmatched += 1;
                continue;
            };
            let served = || reps.iter().any(|(_, r)| matches!(r, Replica::Loaded { .. }));
            let is_available = match action {
                Action::Drop => {
                    p.drop_all(&reps, &segment());
                    p.plan.stats.marked_unused_by_rule += 1;
                    p.plan.unused.entry(name.clone()).or_default().push(key.clone());
                    true
                }
                Action::Broadcast => {
                    p.broadcast(&reps, &segment, seg);
                    served()
                }
                Action::Load(tiers) => {
                    p.load(&reps, &segment, seg, tiers);
                    tiers.values().sum::<u32>() == 0 || served()
                }
            };
            // Only needed to decide whether an overshadowed segment may go.
            if !overshadowed.is_empty() {
                available.insert(key, is_available);
            }
        }
        // An overshadowed segment is marked unused, and dropped, once what overshadows it is
        // available.
        for (key, reps) in shadowed {
            let covered = ds
                .overlapping(&key.interval())
                .filter(|(k, s)| s.used && !overshadowed.contains(*k) && k.version > key.version)
                .all(|(k, _)| available.get(k).copied().unwrap_or(false));
            if covered {
                p.plan.stats.marked_unused_overshadowed += 1;
                p.plan.unused.entry(name.clone()).or_default().push(key.clone());
                p.drop_all(
                    &reps,
                    &SegmentRef {
                        datasource: name.as_str().into(),
                        key: key.clone(),
                    },
                );
            }
        }
    }
    for (i, c) in cursors.iter_mut().enumerate() {
        for (r, rep) in c {
            p.drop_stale(i, r, rep);
        }
    }
    p.balance(
        config.max_segments_to_move,
        samples.into_iter().map(|r| r.items).collect(),
    );
    for v in p.plan.unused.values_mut() {
        v.sort();
        v.dedup();
    }
    *cache = std::mem::take(&mut p.costs.cache);
    Some(p.plan)
}

/// Druid's smart segment loading: replicas beyond the first are throttled at 5% of the used
/// segments (at least 100) per run, and load queues are not capped.
fn smart_throttle(segments: &SegmentTable) -> u64 {
    let used: u64 = segments.datasources().map(|(_, d)| d.used_count()).sum();
    (used / 20).max(100)
}

/// Whether a tombstone hides any used segment with data.
fn covers_data(ds: &Datasource, tombstone: &SegmentKey) -> bool {
    ds.overlapping(&tombstone.interval())
        .any(|(k, s)| s.used && k != tombstone && s.shard_spec.kind != ShardKind::Tombstone)
}

impl<'a> Planner<'a> {
    fn drop_request(&mut self, server: usize, segment: SegmentRef, rep: &Replica) {
        self.servers[server].busy = true;
        if rep.wanted() {
            self.forget(server, &segment, rep.size());
        }
        if matches!(rep, Replica::Load { .. }) {
            self.servers[server].queue = self.servers[server].queue.saturating_sub(1);
        }
        self.plan.stats.dropped += 1;
        self.plan.drops.push(DropRequest {
            host: self.servers[server].rec.server.host.clone(),
            segment,
        });
    }

    /// A replica of a segment that is gone from the table.
    fn drop_stale(&mut self, server: usize, segment: &SegmentRef, rep: &Replica) {
        if !matches!(rep, Replica::Drop { .. }) {
            self.drop_request(server, segment.clone(), rep);
        }
    }

    fn drop_all(&mut self, reps: &[(usize, &Replica)], segment: &SegmentRef) {
        for (i, rep) in reps {
            if !matches!(rep, Replica::Drop { .. }) {
                self.drop_request(*i, segment.clone(), rep);
            }
        }
    }

    /// Whether server `i` may be asked to load a segment of `size` it has `rep` of.
    fn can_load(&self, i: usize, rep: Option<&Replica>, size: u64) -> bool {
        let s = &self.servers[i];
        let held = match rep {
            None => 0,
            Some(Replica::Failed { since_ms, .. }) if self.now - (*since_ms as i64) >= FAILED_RETRY_MS => 0,
            Some(Replica::Drop { size, .. }) => *size,
            Some(_) => return false,
        };
        !s.decommissioning && s.free() + held >= size && s.queue < self.queue_cap
    }

    fn request_load(
        &mut self,
        i: usize,
        segment: SegmentRef,
        size: u64,
        rep: Option<&Replica>,
        moved_from: Option<String>,
    ) {
        if !rep.is_some_and(Replica::wanted) {
            self.costs.change(i, &segment, 1);
            self.servers[i].held += 1;
            self.servers[i].held_bytes += size;
        }
        let s = &mut self.servers[i];
        // Taking back a drop in flight needs no new room.
        if !matches!(rep, Some(Replica::Drop { .. })) {
            s.committed += size;
        }
        s.queue += 1;
        s.busy = true;
        if moved_from.is_some() {
            self.plan.stats.moved += 1;
        } else {
            self.plan.stats.assigned += 1;
        }
        self.plan.loads.push(LoadRequest {
            host: s.rec.server.host.clone(),
            segment,
            moved_from,
        });
    }

    fn broadcast(&mut self, reps: &[(usize, &Replica)], segment: &dyn Fn() -> SegmentRef, seg: &StoredSegment) {
        for i in 0..self.servers.len() {
            let rep = reps.iter().find(|(j, _)| *j == i).map(|(_, r)| *r);
            let wanted = rep.is_some_and(Replica::wanted);
            if self.servers[i].decommissioning {
                if let Some(r) = rep.filter(|r| r.wanted()) {
                    self.drop_request(i, segment(), r);
                }
            } else if !wanted {
                if self.can_load(i, rep, seg.size) {
                    self.request_load(i, segment(), seg.size, rep, None);
                } else {
                    self.plan.stats.unplaceable += 1;
                }
            }
        }
    }

    fn load(
        &mut self,
        reps: &[(usize, &Replica)],
        segment: &dyn Fn() -> SegmentRef,
        seg: &StoredSegment,
        tiers: &BTreeMap<String, u32>,
    ) {
        if self.settled(reps, tiers) {
            return;
        }
        let mut satisfied = true;
        let mut wanted_tiers: HashSet<&str> = HashSet::new();
        for (tier, &target) in tiers {
            if target == 0 {
                continue;
            }
            wanted_tiers.insert(tier);
            if !self.tiers.contains_key(tier.as_str()) {
                self.plan.stats.unknown_tiers.insert(tier.clone());
                continue;
            }
            if !self.load_tier(reps, segment, seg, tier, target) {
                satisfied = false;
            }
        }
        // Replicas on tiers the rule does not ask for go once the asked tiers hold theirs.
        if satisfied {
            for (i, rep) in reps {
                let tier = self.servers[*i].rec.server.tier.as_str();
                if !wanted_tiers.contains(tier) && !matches!(rep, Replica::Drop { .. }) {
                    self.drop_request(*i, segment(), rep);
                }
            }
        }
    }

    /// Whether a segment holds exactly what its load rule asks, all loaded, nothing moving and
    /// nothing on a decommissioning Historical: the common case, decided without allocating.
    fn settled(&self, reps: &[(usize, &Replica)], tiers: &BTreeMap<String, u32>) -> bool {
        let plain = |(i, r): &(usize, &Replica)| {
            matches!(r, Replica::Loaded { moved_from: None, .. }) && !self.servers[*i].decommissioning
        };
        if !reps.iter().all(plain) {
            return false;
        }
        let mut counted = 0;
        for (tier, &target) in tiers {
            let n = reps
                .iter()
                .filter(|(i, _)| self.servers[*i].rec.server.tier == *tier)
                .count();
            if n != target as usize || (target > 0 && !self.tiers.contains_key(tier.as_str())) {
                return false;
            }
            counted += n;
        }
        counted == reps.len()
    }

    /// Plans one tier of a load rule; returns whether the tier holds its target loaded.
    fn load_tier(
        &mut self,
        reps: &[(usize, &Replica)],
        segment: &dyn Fn() -> SegmentRef,
        seg: &StoredSegment,
        tier: &str,
        target: u32,
    ) -> bool {
        let target = target as usize;
        let in_tier: Vec<(usize, &Replica)> = reps
            .iter()
            .filter(|(i, _)| self.servers[*i].rec.server.tier == tier)
            .map(|(i, r)| (*i, *r))
            .collect();
        let host = |i: usize| self.servers[i].rec.server.host.as_str();
        let holds = |h: &str, loaded_only: bool| {
            in_tier.iter().any(|(j, r)| {
                self.servers[*j].rec.server.host == h
                    && match r {
                        Replica::Loaded { .. } => true,
                        Replica::Load { .. } => !loaded_only,
                        _ => false,
                    }
            })
        };
        // A finished move: drop the replica it replaces.
        let mut replaced: Vec<usize> = Vec::new();
        for (_, r) in &in_tier {
            if let Replica::Loaded {
                moved_from: Some(from), ..
            } = r
            {
                if let Some((j, _)) = in_tier.iter().find(|(j, r)| host(*j) == from && r.wanted()) {
                    replaced.push(*j);
                }
            }
        }
        // A move in flight counts once: the replica it replaces stands for it.
        let in_flight = |r: &Replica| match r {
            Replica::Load {
                moved_from: Some(from), ..
            } => holds(from, true),
            _ => false,
        };
        let mut loaded: Vec<usize> = Vec::new();
        let mut loading: Vec<usize> = Vec::new();
        for (i, r) in &in_tier {
            if replaced.contains(i) {
                continue;
            }
            match r {
                Replica::Loaded { .. } => loaded.push(*i),
                Replica::Load { .. } if !in_flight(r) => loading.push(*i),
                _ => {}
            }
        }
        let mut drops: Vec<usize> = replaced;
        let useful = |v: &Vec<usize>, s: &Self| v.iter().filter(|i| !s.servers[**i].decommissioning).count();
        let have = useful(&loaded, self) + useful(&loading, self);
        if have < target {
            let any = !loaded.is_empty() || !loading.is_empty();
            let mut chosen: Vec<usize> = Vec::new();
            for k in 0..(target - have) {
                let beyond_first = any || k > 0;
                if beyond_first && self.replicated.get(tier).copied().unwrap_or(0) >= self.throttle {
                    self.plan.stats.throttled += 1;
                    continue;
                }
                let candidates: Vec<usize> = self.tiers[tier]
                    .iter()
                    .copied()
                    .filter(|i| !chosen.contains(i))
                    .filter(|i| {
                        let rep = in_tier.iter().find(|(j, _)| j == i).map(|(_, r)| *r);
                        self.can_load(*i, rep, seg.size)
                    })
                    .collect();
                let holders: Vec<usize> = loaded.iter().chain(&loading).chain(&chosen).copied().collect();
                let candidate = self.pick(&self.spread(candidates, &holders, tier), &segment(), seg.size);
                match candidate {
                    Some(i) => {
                        let rep = in_tier.iter().find(|(j, _)| *j == i).map(|(_, r)| *r);
                        self.request_load(i, segment(), seg.size, rep, None);
                        for h in holders {
                            self.pair(i, h, 1);
                        }
                        chosen.push(i);
                        if beyond_first {
                            *self.replicated.entry(tier.to_string()).or_default() += 1;
                        }
                    }
                    None => self.plan.stats.unplaceable += 1,
                }
            }
        }
        // Replicas on decommissioning Historicals go (loaded ones once the tier holds its
        // target elsewhere); then any surplus, loading replicas first, most utilised first.
        let decom = |i: &usize, s: &Self| s.servers[*i].decommissioning;
        let mut useful_loaded = useful(&loaded, self);
        drops.extend(loading.iter().filter(|i| decom(i, self)));
        if useful_loaded >= target {
            drops.extend(loaded.iter().filter(|i| decom(i, self)));
        }
        let mut spare: Vec<usize> = loading.into_iter().filter(|i| !decom(i, self)).collect();
        let mut excess = (useful_loaded + spare.len()).saturating_sub(target);
        if excess > 0 {
            spare = self.costliest_first(spare, &segment());
        }
        for i in spare {
            if excess == 0 {
                break;
            }
            drops.push(i);
            excess -= 1;
        }
        let mut held: Vec<usize> = loaded.into_iter().filter(|i| !decom(i, self)).collect();
        if excess > 0 && useful_loaded > target {
            held = self.costliest_first(held, &segment());
        }
        for i in held {
            if excess == 0 || useful_loaded <= target {
                break;
            }
            drops.push(i);
            excess -= 1;
            useful_loaded -= 1;
        }
        drops.sort_unstable();
        drops.dedup();
        for i in drops {
            if let Some((_, r)) = in_tier.iter().find(|(j, _)| *j == i) {
                let r = *r;
                self.drop_request(i, segment(), r);
            }
        }
        useful_loaded >= target
    }

    /// A replica the plan takes away (dropped, or moved elsewhere).
    fn forget(&mut self, i: usize, segment: &SegmentRef, size: u64) {
        let s = &mut self.servers[i];
        s.held = s.held.saturating_sub(1);
        s.held_bytes = s.held_bytes.saturating_sub(size);
        self.costs.change(i, segment, -1);
    }

    /// What `segment` (of `size` bytes) costs on Historical `i` under the strategy (`holds`: `i`
    /// holds it).
    fn placement_cost(&mut self, i: usize, segment: &SegmentRef, size: u64, holds: bool) -> f64 {
        let cost = self.costs.cost(i, segment, holds);
        match self.strategy {
            BalancerStrategy::DiskNormalized => {
                // Counted as the Historical would be with the segment: Druid counts a holder
                // with it and any other without, so two Historicals can each look cheaper
                // than the other and balancing moves a segment back and forth forever.
                let s = &self.servers[i];
                let (held, bytes) = match holds {
                    true => (s.held, s.held_bytes),
                    false => (s.held + 1, s.held_bytes + size),
                };
                let usage = bytes as f64 / s.rec.server.max_size.max(1) as f64;
                cost / held.max(1) as f64 * usage
            }
            BalancerStrategy::Cost | BalancerStrategy::Random => cost,
        }
    }

    /// A hash of the segment and Historical `i`: the order among equals, and `random`'s order.
    fn rank(&self, i: usize, segment: &SegmentRef) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (segment, &self.servers[i].rec.server.host).hash(&mut h);
        h.finish()
    }

    /// Where a new replica goes: the candidate where it costs least (Druid's `cost`); among
    /// equal costs (empty Historicals), the one a hash of the segment and the Historical ranks
    /// first, so that ties do not all go to one. With `random`, that hash alone chooses.
    fn pick(&mut self, candidates: &[usize], segment: &SegmentRef, size: u64) -> Option<usize> {
        if self.strategy == BalancerStrategy::Random {
            return candidates.iter().copied().max_by_key(|&i| self.rank(i, segment));
        }
        let costs: Vec<(usize, f64)> = candidates
            .iter()
            .map(|&i| (i, self.placement_cost(i, segment, size, false)))
            .collect();
        let least = costs.iter().map(|(_, c)| *c).min_by(f64::total_cmp)?;
        costs
            .into_iter()
            .filter(|(_, c)| *c <= least * (1.0 + COST_SLACK))
            .max_by_key(|(i, _)| self.rank(*i, segment))
            .map(|(i, _)| i)
    }

    fn pair(&mut self, a: usize, b: usize, delta: i32) {
        for (x, y) in [(a, b), (b, a)] {
            self.pairs[x][y] = self.pairs[x][y].saturating_add_signed(delta);
        }
    }

    /// The candidates for another replica of a segment `holders` hold that would keep each
    /// holder's partners even: none already sharing more segments with a holder than that
    /// holder's fair share over the others of its tier (or all, if none qualifies). Druid's
    /// cost alone pairs Historicals up on evenly spread data (a pair's members hold the same
    /// segments, so both are cheapest for the next one): losing one, its segments could then
    /// go back only to the few Historicals the cost favours, one after another.
    fn spread(&self, candidates: Vec<usize>, holders: &[usize], tier: &str) -> Vec<usize> {
        let others = self.tiers[tier].len().saturating_sub(1).max(1) as u32;
        let fair: Vec<(usize, u32)> = holders
            .iter()
            .map(|&h| (h, self.pairs[h].iter().sum::<u32>().div_ceil(others)))
            .collect();
        let even: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|c| fair.iter().all(|&(h, f)| self.pairs[h][*c] <= f))
            .collect();
        if even.is_empty() {
            candidates
        } else {
            even
        }
    }

    /// Historicals holding `segment`, where it costs most first: the order replicas are dropped
    /// in (with `random`, the hash's order).
    fn costliest_first(&mut self, holders: Vec<usize>, segment: &SegmentRef) -> Vec<usize> {
        let mut keyed: Vec<(f64, usize)> = holders
            .into_iter()
            .map(|i| match self.strategy {
                BalancerStrategy::Random => (self.rank(i, segment) as f64, i),
                _ => (self.placement_cost(i, segment, 0, true), i),
            })
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        keyed.into_iter().map(|(_, i)| i).collect()
    }

    /// Balances each tier with nothing loading or dropping: each sampled replica moves to the
    /// Historical of its tier where it costs least, if that costs less than where it is
    /// (`random` does not balance, as in Druid).
    fn balance(&mut self, max_moves: u32, samples: Vec<Vec<(SegmentRef, usize, u64)>>) {
        if self.strategy == BalancerStrategy::Random {
            return;
        }
        let mut moves = 0u32;
        let tiers: Vec<(&str, Vec<usize>)> = self.tiers.iter().map(|(t, m)| (*t, m.clone())).collect();
        let mut moved: HashSet<SegmentRef> = HashSet::new();
        for ((tier, members), sample) in tiers.into_iter().zip(samples) {
            let members: Vec<usize> = members
                .into_iter()
                .filter(|i| !self.servers[*i].decommissioning)
                .collect();
            if members.len() < 2 || members.iter().any(|i| self.servers[*i].busy) {
                continue;
            }
            for (seg, src, size) in sample {
                if moves >= max_moves {
                    return;
                }
                if moved.contains(&seg) {
                    continue;
                }
                let here = self.placement_cost(src, &seg, size, true);
                let others: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&h| h != src && self.servers[h].rec.replica(&seg).is_some_and(Replica::wanted))
                    .collect();
                let open: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&d| {
                        let s = &self.servers[d];
                        d != src && s.rec.replica(&seg).is_none() && size <= s.free() && s.queue < self.queue_cap
                    })
                    .collect();
                let mut best: Option<(f64, usize)> = None;
                for d in self.spread(open, &others, tier) {
                    let cost = self.placement_cost(d, &seg, size, false);
                    if best.is_none_or(|(c, _)| cost < c) {
                        best = Some((cost, d));
                    }
                }
                // A relative margin keeps rounding from moving a segment back and forth.
                let Some((_, dst)) = best.filter(|(c, _)| *c < here * (1.0 - COST_SLACK)) else {
                    continue;
                };
                let from = self.servers[src].rec.server.host.clone();
                self.forget(src, &seg, size);
                self.request_load(dst, seg.clone(), size, None, Some(from));
                for h in others {
                    self.pair(src, h, -1);
                    self.pair(dst, h, 1);
                }
                moved.insert(seg);
                moves += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
