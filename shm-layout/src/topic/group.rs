//! Consumer group coordination: named members, partition ownership and
//! the group generation that fences members whose partitions moved.
//!
//! Each group entry of a topic has a [`GroupCoord`] (members with their
//! holder token, name, heartbeat, session timeout and the generation they
//! joined at; the group's generation and counters), and each partition
//! control block has one owner word per group: `generation << 8 | (member
//! slot + 1)`, the generation being the one at which the partition was
//! handed to that member (0: nobody owns it).
//!
//! Every change of membership or ownership happens under the topic's
//! admin lock ([`TopicControl::lock_waiting`], taken over from a dead
//! holder), so it is a lock, not a lock-free algorithm: a *rebalance*
//! evicts dead members (told by the holder token's liveness) and silent
//! ones (no heartbeat within their session timeout), keeps each surviving
//! member's partitions up to its share, hands the rest out and writes
//! their owner words. Outside the lock members only heartbeat (a Relaxed
//! store of their own heartbeat word), load the generation and read their
//! assignment.
//!
//! **Sequence.** The group's `seq` word is `2 * generation`, odd while a
//! rebalance writes: the rebalance stores the odd value, then (Release
//! stores) the slots and owner words, then the next even value (Release).
//! A reader of the assignment loads `seq` (Acquire), skips odd values,
//! reads its slot and the owner words (Acquire), and keeps what it read
//! only if `seq` is unchanged: never a mix of two rebalances. A rebalancer
//! killed half-way leaves `seq` odd (or owner words naming no live member):
//! [`TopicControl::needs_rebalance`] says so, and the next rebalance skips
//! the generation the dead one may have written, so no owner word is ever
//! issued twice.
//!
//! **Fencing.** A member caches the owner word of each partition it was
//! given. A commit ([`TopicControl::commit_owned`]) loads the partition's
//! owner word and commits only if it is unchanged: a partition that moved
//! (to another member, or back to the same member at a later generation)
//! refuses commits made for the earlier assignment. A commit racing the
//! rebalance that moves its partition can still land if its check came
//! first; that commit is for records its member read, and cursors never
//! move back, so the new owner at worst reads again records already
//! handled (delivery is at-least-once).

use super::{GROUP_MEMBERS, GroupId, Line, Partition, PartitionControl, TopicControl, TopicError};
use crate::edge::RingBytes;
use crate::mutant::{self, Mutant};
use crate::sync::{AtomicU64, Ordering, fence};
use crate::wait::Futex;

/// Longest member name, in bytes.
pub const MEMBER_NAME_MAX: usize = 24;

/// Size of one group's [`GroupCoord`] in the topic's control block.
pub const GROUP_COORD_SIZE: u64 = 640;

/// Reads of an assignment that found a rebalance in progress before
/// [`TopicControl::assignment`] gives up with `Rebalancing`.
#[cfg(not(loom))]
const ASSIGNMENT_ATTEMPTS: u32 = 1 << 12;
/// Reads of an assignment before giving up (fewer under loom).
#[cfg(loom)]
const ASSIGNMENT_ATTEMPTS: u32 = 2;

/// One member entry (64 bytes).
#[repr(C)]
#[derive(Debug)]
pub(super) struct MemberSlot {
    /// Holder token of the member's process (0: free).
    token: AtomicU64,
    /// Unix milliseconds of the member's last heartbeat.
    heartbeat_ms: AtomicU64,
    /// The group generation at which the member joined.
    joined: AtomicU64,
    /// The member's session timeout in ms (silent longer: evicted).
    session_ms: AtomicU64,
    /// The name's length in bytes.
    name_len: AtomicU64,
    /// The name's bytes, little-endian words, zero-padded.
    name: [AtomicU64; MEMBER_NAME_MAX / 8],
}

/// Membership and counters of one consumer group ([`GROUP_COORD_SIZE`]
/// bytes).
#[repr(C)]
#[derive(Debug)]
pub(super) struct GroupCoord {
    /// `2 * generation`, odd while a rebalance writes (see the module
    /// docs).
    seq: AtomicU64,
    /// Members evicted because their process was dead.
    evicted_dead: AtomicU64,
    /// Members evicted because they were silent past their timeout.
    evicted_silent: AtomicU64,
    /// Partitions handed from one member (or from nobody) to another.
    moved: AtomicU64,
    /// Unix milliseconds of the last rebalance.
    last_rebalance_ms: AtomicU64,
    /// Rebalances that found an earlier one cut short.
    repaired: AtomicU64,
    _reserved: [AtomicU64; 2],
    members: [MemberSlot; GROUP_MEMBERS],
    _tail: [AtomicU64; 8],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<MemberSlot>() == 64);
    assert!(std::mem::size_of::<GroupCoord>() == GROUP_COORD_SIZE as usize);
};

fn zero<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl GroupCoord {
    pub(super) fn new() -> GroupCoord {
        GroupCoord {
            seq: AtomicU64::new(0),
            evicted_dead: AtomicU64::new(0),
            evicted_silent: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            last_rebalance_ms: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            _reserved: zero(),
            members: std::array::from_fn(|_| MemberSlot {
                token: AtomicU64::new(0),
                heartbeat_ms: AtomicU64::new(0),
                joined: AtomicU64::new(0),
                session_ms: AtomicU64::new(0),
                name_len: AtomicU64::new(0),
                name: zero(),
            }),
            _tail: zero(),
        }
    }

    /// The generation the next rebalance makes: one on, or two if a
    /// rebalance was cut short (it may have written owner words of the
    /// generation after the current one).
    fn next_generation(&self) -> u64 {
        let seq = self.seq.load(Ordering::Relaxed);
        (seq >> 1).wrapping_add(1 + (seq & 1))
    }
}

/// The owner words of a partition, one per group (a line of its control
/// block).
pub(super) type OwnerLine = Line<[AtomicU64; super::MAX_GROUPS]>;

/// A member's entry and the generation it joined at (its identity: the
/// entry may later be reused by another member).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberId {
    slot: usize,
    joined: u64,
}

impl MemberId {
    /// The member's entry index.
    pub fn slot(self) -> usize {
        self.slot
    }

    /// The generation it joined at.
    pub fn joined(self) -> u64 {
        self.joined
    }
}

/// A partition handed to a member, with the owner word that fences its
/// commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owned {
    /// The partition.
    pub partition: u64,
    /// Its owner word when handed over.
    pub word: u64,
}

/// What a rebalance did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebalance {
    /// The generation it made.
    pub generation: u64,
    /// Members evicted for being dead.
    pub evicted_dead: u64,
    /// Members evicted for being silent.
    pub evicted_silent: u64,
    /// Partitions that changed owner.
    pub moved: u64,
}

/// A member as seen in the group's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its entry and joining generation.
    pub id: MemberId,
    /// Its name.
    pub name: String,
    /// Holder token of its process.
    pub token: u64,
    /// Unix milliseconds of its last heartbeat.
    pub heartbeat_ms: u64,
    /// Its session timeout in ms.
    pub session_ms: u64,
}

/// A group's coordination counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordStats {
    /// The current generation (rebalances so far).
    pub generation: u64,
    /// Members evicted for being dead.
    pub evicted_dead: u64,
    /// Members evicted for being silent.
    pub evicted_silent: u64,
    /// Partitions that changed owner.
    pub moved: u64,
    /// Rebalances that found an earlier one cut short.
    pub repaired: u64,
    /// Unix milliseconds of the last rebalance.
    pub last_rebalance_ms: u64,
}

/// The owner word of a partition handed to `slot` at `generation`.
fn owner_word(generation: u64, slot: usize) -> u64 {
    generation << 8 | (slot as u64 + 1)
}

/// `(generation, slot)` of an owner word; `None` for "nobody" (or a slot
/// out of range: a scribbled word).
fn decode_owner(word: u64) -> Option<(u64, usize)> {
    let slot = (word & 0xFF) as usize;
    (slot != 0 && slot <= GROUP_MEMBERS).then(|| (word >> 8, slot - 1))
}

fn name_words(name: &str) -> Result<[u64; MEMBER_NAME_MAX / 8], TopicError> {
    if name.is_empty() || name.len() > MEMBER_NAME_MAX {
        return Err(TopicError::BadMemberName);
    }
    let mut padded = [0u8; MEMBER_NAME_MAX];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    Ok(std::array::from_fn(|i| {
        u64::from_le_bytes(padded[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }))
}

impl MemberSlot {
    fn has_name(&self, len: usize, words: &[u64; MEMBER_NAME_MAX / 8]) -> bool {
        self.name_len.load(Ordering::Relaxed) == len as u64
            && self
                .name
                .iter()
                .zip(words)
                .all(|(w, &v)| w.load(Ordering::Relaxed) == v)
    }

    fn name(&self) -> Option<String> {
        let len = usize::try_from(self.name_len.load(Ordering::Relaxed)).ok()?;
        super::read_name(&self.name, len)
    }

    /// Whether the member is dead, or silent past its timeout at `now_ms`.
    fn evictable(&self, now_ms: u64, is_dead: &impl Fn(u64) -> bool) -> Option<bool> {
        let token = self.token.load(Ordering::Acquire);
        if token == 0 {
            return None;
        }
        if is_dead(token) {
            return Some(true);
        }
        let session = self.session_ms.load(Ordering::Relaxed);
        let silent = now_ms.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        (session > 0 && silent > session).then_some(false)
    }

    fn clear(&self) {
        self.name_len.store(0, Ordering::Relaxed);
        // Release: whoever sees the entry free sees the name gone.
        self.token.store(0, Ordering::Release);
    }
}

impl TopicControl {
    fn coord(&self, group: GroupId) -> &GroupCoord {
        &self.coords.0[group.index()]
    }

    /// Joins `name` to `group` for the process `token` (or finds it a
    /// member already), with `session_ms` as its session timeout, and
    /// rebalances if membership changed. Members dead or silent are
    /// evicted first, so a name held by such a member is taken over; held
    /// by a live, heartbeating member of another process it is an error.
    /// Returns the member and the partitions it owns.
    ///
    /// # Errors
    /// `BadMemberName`, `MemberTaken`, `TooManyMembers`, `AdminBusy`.
    #[allow(clippy::too_many_arguments)] // the lock's and the rebalance's inputs
    pub fn claim_member<M: RingBytes>(
        &self,
        group: GroupId,
        name: &str,
        token: u64,
        now_ms: u64,
        session_ms: u64,
        is_dead: impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
    ) -> Result<(MemberId, Vec<Owned>), TopicError> {
        let words = name_words(name)?;
        let _lock = self.lock_waiting(token, &is_dead)?;
        let coord = self.coord(group);
        let (dead, silent) = self.evict_locked(group, now_ms, &is_dead);
        let existing =
            coord.members.iter().enumerate().find(|(_, m)| {
                m.token.load(Ordering::Acquire) != 0 && m.has_name(name.len(), &words)
            });
        let id = match existing {
            Some((slot, m)) => {
                if m.token.load(Ordering::Acquire) != token {
                    return Err(TopicError::MemberTaken);
                }
                m.session_ms.store(session_ms, Ordering::Relaxed);
                m.heartbeat_ms.store(now_ms, Ordering::Relaxed);
                let id = MemberId {
                    slot,
                    joined: m.joined.load(Ordering::Relaxed),
                };
                if dead + silent > 0 || self.needs_rebalance(group, now_ms, &is_dead, partitions) {
                    self.rebalance_locked(group, now_ms, &is_dead, partitions);
                }
                id
            }
            None => {
                let (slot, m) = coord
                    .members
                    .iter()
                    .enumerate()
                    .find(|(_, m)| m.token.load(Ordering::Acquire) == 0)
                    .ok_or(TopicError::TooManyMembers)?;
                let joined = coord.next_generation();
                for (w, v) in m.name.iter().zip(words) {
                    w.store(v, Ordering::Relaxed);
                }
                m.name_len.store(name.len() as u64, Ordering::Relaxed);
                m.joined.store(joined, Ordering::Relaxed);
                m.session_ms.store(session_ms, Ordering::Relaxed);
                m.heartbeat_ms.store(now_ms, Ordering::Relaxed);
                // Release: whoever sees the token sees the entry.
                m.token.store(token, Ordering::Release);
                self.rebalance_locked(group, now_ms, &is_dead, partitions);
                MemberId { slot, joined }
            }
        };
        Ok((id, self.assignment(group, id, partitions)?))
    }

    /// Notes a heartbeat of `member` at `now_ms`; returns the group's
    /// generation (a change since the member's last claim means its
    /// partitions may have moved).
    ///
    /// # Errors
    /// `NotMember` if the member was evicted (claim again).
    pub fn heartbeat(
        &self,
        group: GroupId,
        member: MemberId,
        token: u64,
        now_ms: u64,
    ) -> Result<u64, TopicError> {
        let m = self.member_slot(group, member)?;
        if m.token.load(Ordering::Acquire) != token {
            return Err(TopicError::NotMember);
        }
        m.heartbeat_ms.store(now_ms, Ordering::Relaxed);
        Ok(self.generation(group))
    }

    /// The group's generation (rebalances completed).
    pub fn generation(&self, group: GroupId) -> u64 {
        self.coord(group).seq.load(Ordering::Acquire) >> 1
    }

    /// `member`'s entry, if it still holds it.
    fn member_slot(&self, group: GroupId, member: MemberId) -> Result<&MemberSlot, TopicError> {
        let m = self
            .coord(group)
            .members
            .get(member.slot)
            .ok_or(TopicError::NotMember)?;
        if m.token.load(Ordering::Acquire) == 0 || m.joined.load(Ordering::Relaxed) != member.joined
        {
            return Err(TopicError::NotMember);
        }
        Ok(m)
    }

    /// Whether `group` needs a rebalance at `now_ms`: a member is dead or
    /// silent past its timeout (one liveness check per member), a
    /// rebalance was cut short, or a partition is owned by no live member
    /// while the group has members.
    pub fn needs_rebalance<M: RingBytes>(
        &self,
        group: GroupId,
        now_ms: u64,
        is_dead: &impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
    ) -> bool {
        let coord = self.coord(group);
        if coord.seq.load(Ordering::Acquire) & 1 == 1 {
            return true;
        }
        let mut any = false;
        for m in &coord.members {
            match m.evictable(now_ms, is_dead) {
                Some(_) => return true,
                None => any |= m.token.load(Ordering::Acquire) != 0,
            }
        }
        any && partitions.iter().any(|p| self.owner(group, p).is_none())
    }

    /// Rebalances `group` if it needs it (see
    /// [`TopicControl::needs_rebalance`]), under the admin lock (waiting
    /// for a live holder up to a second). `None` when it did not.
    ///
    /// # Errors
    /// `AdminBusy`.
    pub fn evict_members<M: RingBytes>(
        &self,
        group: GroupId,
        token: u64,
        now_ms: u64,
        is_dead: impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
    ) -> Result<Option<Rebalance>, TopicError> {
        if !self.needs_rebalance(group, now_ms, &is_dead, partitions) {
            return Ok(None);
        }
        let _lock = self.lock_waiting(token, &is_dead)?;
        if !self.needs_rebalance(group, now_ms, &is_dead, partitions) {
            return Ok(None);
        }
        Ok(Some(
            self.rebalance_locked(group, now_ms, &is_dead, partitions),
        ))
    }

    /// Removes `member` from `group` (a clean leave) and rebalances.
    ///
    /// # Errors
    /// `AdminBusy`.
    pub fn leave_member<M: RingBytes>(
        &self,
        group: GroupId,
        member: MemberId,
        token: u64,
        now_ms: u64,
        is_dead: impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
    ) -> Result<(), TopicError> {
        let _lock = self.lock_waiting(token, &is_dead)?;
        if let Ok(m) = self.member_slot(group, member)
            && m.token.load(Ordering::Acquire) == token
        {
            m.clear();
            self.rebalance_locked(group, now_ms, &is_dead, partitions);
        }
        Ok(())
    }

    /// The partitions `member` owns now, as one rebalance left them (see
    /// the module docs).
    ///
    /// # Errors
    /// `NotMember` if the member's entry is no longer its own;
    /// `Rebalancing` if a rebalance stayed in progress throughout (its
    /// maker may have died: [`TopicControl::evict_members`] repairs it).
    pub fn assignment<M: RingBytes>(
        &self,
        group: GroupId,
        member: MemberId,
        partitions: &[Partition<'_, M>],
    ) -> Result<Vec<Owned>, TopicError> {
        let coord = self.coord(group);
        for _ in 0..ASSIGNMENT_ATTEMPTS {
            let before = coord.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                crate::sync::spin_loop();
                continue;
            }
            self.member_slot(group, member)?;
            let owned: Vec<Owned> = partitions
                .iter()
                .enumerate()
                .filter_map(|(p, part)| {
                    let word = part.owners().0[group.index()].load(Ordering::Acquire);
                    let (generation, slot) = decode_owner(word)?;
                    (slot == member.slot && generation >= member.joined).then_some(Owned {
                        partition: p as u64,
                        word,
                    })
                })
                .collect();
            // The loads above are Acquire, so this one is not done before
            // them: an unchanged `seq` means no rebalance wrote meanwhile.
            if mutant::active(Mutant::GroupSkipSeqRecheck)
                || coord.seq.load(Ordering::Acquire) == before
            {
                return Ok(owned);
            }
        }
        Err(TopicError::Rebalancing)
    }

    /// Commits `offset` for `group` in partition `p` if `owned` still
    /// holds it (its owner word is unchanged).
    ///
    /// # Errors
    /// `Fenced` if the partition moved since it was handed over.
    pub fn commit_owned<M: RingBytes, F: Futex + ?Sized>(
        &self,
        group: GroupId,
        partition: &Partition<'_, M>,
        owned: Owned,
        offset: u64,
        futex: &F,
    ) -> Result<(), TopicError> {
        // Acquire: pairs with the rebalance's Release store of the word.
        if partition.owners().0[group.index()].load(Ordering::Acquire) != owned.word {
            return Err(TopicError::Fenced {
                partition: owned.partition,
            });
        }
        partition.commit(group, offset, futex);
        Ok(())
    }

    /// The members of `group` now.
    pub fn group_members(&self, group: GroupId) -> Vec<MemberInfo> {
        self.coord(group)
            .members
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| {
                let token = m.token.load(Ordering::Acquire);
                if token == 0 {
                    return None;
                }
                Some(MemberInfo {
                    id: MemberId {
                        slot,
                        joined: m.joined.load(Ordering::Relaxed),
                    },
                    name: m.name()?,
                    token,
                    heartbeat_ms: m.heartbeat_ms.load(Ordering::Relaxed),
                    session_ms: m.session_ms.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// The member entry that owns partition `p` for `group`, if a member
    /// holds it (an owner word naming a free entry, or one from before its
    /// member joined, names nobody).
    pub fn owner<M: RingBytes>(
        &self,
        group: GroupId,
        partition: &Partition<'_, M>,
    ) -> Option<usize> {
        let word = partition.owners().0[group.index()].load(Ordering::Acquire);
        let (generation, slot) = decode_owner(word)?;
        let m = self.coord(group).members.get(slot)?;
        (m.token.load(Ordering::Acquire) != 0 && generation >= m.joined.load(Ordering::Relaxed))
            .then_some(slot)
    }

    /// The group's coordination counters.
    pub fn coord_stats(&self, group: GroupId) -> CoordStats {
        let c = self.coord(group);
        CoordStats {
            generation: self.generation(group),
            evicted_dead: c.evicted_dead.load(Ordering::Relaxed),
            evicted_silent: c.evicted_silent.load(Ordering::Relaxed),
            moved: c.moved.load(Ordering::Relaxed),
            repaired: c.repaired.load(Ordering::Relaxed),
            last_rebalance_ms: c.last_rebalance_ms.load(Ordering::Relaxed),
        }
    }

    /// Clears the entries of dead and silent members (admin lock held);
    /// `(dead, silent)`.
    fn evict_locked(
        &self,
        group: GroupId,
        now_ms: u64,
        is_dead: &impl Fn(u64) -> bool,
    ) -> (u64, u64) {
        let coord = self.coord(group);
        let (mut dead, mut silent) = (0, 0);
        for m in &coord.members {
            match m.evictable(now_ms, is_dead) {
                Some(true) => dead += 1,
                Some(false) => silent += 1,
                None => continue,
            }
            m.clear();
        }
        coord.evicted_dead.fetch_add(dead, Ordering::Relaxed);
        coord.evicted_silent.fetch_add(silent, Ordering::Relaxed);
        (dead, silent)
    }

    /// Evicts, then hands out the partitions (admin lock held): each live
    /// member keeps what it owns up to its share (the partition count
    /// divided among the members, the remainder going to those owning the
    /// most), the rest goes to members below their share. Written between
    /// an odd and the next even `seq` (see the module docs).
    fn rebalance_locked<M: RingBytes>(
        &self,
        group: GroupId,
        now_ms: u64,
        is_dead: &impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
    ) -> Rebalance {
        let coord = self.coord(group);
        let seq = coord.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            coord.repaired.fetch_add(1, Ordering::Relaxed);
        }
        let generation = coord.next_generation();
        coord.seq.store(
            generation.wrapping_mul(2).wrapping_sub(1),
            Ordering::Relaxed,
        );
        // The odd `seq` is ordered before every store below: a reader that
        // sees one of them sees `seq` changed.
        fence(Ordering::Release);
        let (evicted_dead, evicted_silent) = self.evict_locked(group, now_ms, is_dead);
        let g = group.index();
        // Each live member: (slot, joined, name, currently owned).
        let mut live: Vec<(usize, u64, String, usize)> = coord
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.token.load(Ordering::Acquire) != 0)
            .map(|(slot, m)| {
                (
                    slot,
                    m.joined.load(Ordering::Relaxed),
                    m.name().unwrap_or_default(),
                    0,
                )
            })
            .collect();
        let valid_owner = |word: u64, live: &[(usize, u64, String, usize)]| {
            let (generation, slot) = decode_owner(word)?;
            live.iter()
                .position(|&(s, joined, _, _)| s == slot && generation >= joined)
        };
        for p in partitions {
            if let Some(i) = valid_owner(p.owners().0[g].load(Ordering::Relaxed), &live) {
                live[i].3 += 1;
            }
        }
        // Members owning most come first and get the remainder.
        live.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| a.2.cmp(&b.2)));
        let n = live.len().max(1);
        let quota: Vec<usize> = (0..live.len())
            .map(|i| partitions.len() / n + usize::from(i < partitions.len() % n))
            .collect();
        let mut kept = vec![0usize; live.len()];
        let mut orphans = Vec::new();
        for (index, p) in partitions.iter().enumerate() {
            let word = p.owners().0[g].load(Ordering::Relaxed);
            match valid_owner(word, &live) {
                Some(i) if kept[i] < quota[i] => kept[i] += 1,
                _ => orphans.push((index, word)),
            }
        }
        let mut moved = 0;
        for (index, word) in orphans {
            let new_word = match (0..live.len()).find(|&i| kept[i] < quota[i]) {
                Some(i) => {
                    kept[i] += 1;
                    owner_word(generation, live[i].0)
                }
                None => 0,
            };
            if new_word != word {
                moved += u64::from(new_word != 0);
                // Release: a committer that sees the word sees `seq` odd
                // or later.
                partitions[index].owners().0[g].store(new_word, Ordering::Release);
            }
        }
        coord.moved.fetch_add(moved, Ordering::Relaxed);
        coord.last_rebalance_ms.store(now_ms, Ordering::Relaxed);
        // Release: a reader that sees the even `seq` sees every word.
        coord
            .seq
            .store(generation.wrapping_mul(2), Ordering::Release);
        Rebalance {
            generation,
            evicted_dead,
            evicted_silent,
            moved,
        }
    }
}

impl<M: RingBytes> Partition<'_, M> {
    /// The partition's owner words (one per group).
    fn owners(&self) -> &OwnerLine {
        &self.ctrl.owners
    }
}

impl PartitionControl {
    pub(super) fn new_owners() -> OwnerLine {
        Line(zero())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::{HeapTopic, NoFutex};
    use crate::topic::Overflow;

    const SESSION: u64 = 30_000;

    fn alive(_: u64) -> bool {
        false
    }

    /// Joins `name` for `token` at time 0 with a long session, every
    /// process alive.
    fn join(t: &HeapTopic, g: GroupId, name: &str, token: u64) -> (MemberId, Vec<Owned>) {
        t.ctrl
            .claim_member(g, name, token, 0, SESSION, alive, &t.partitions())
            .unwrap()
    }

    fn parts(owned: &[Owned]) -> Vec<u64> {
        owned.iter().map(|o| o.partition).collect()
    }

    /// Every partition owned by exactly one live member (by `owner`),
    /// and each member's assignment is what `owner` says.
    fn assert_partitioned(t: &HeapTopic, g: GroupId, members: &[MemberId]) {
        let all = t.partitions();
        for (p, part) in all.iter().enumerate() {
            let owner = t.ctrl.owner(g, part).expect("every partition owned");
            for &m in members {
                let mine = parts(&t.ctrl.assignment(g, m, &all).unwrap());
                assert_eq!(
                    mine.contains(&(p as u64)),
                    owner == m.slot(),
                    "partition {p}"
                );
            }
        }
    }

    #[test]
    fn members_share_partitions_and_a_dead_one_loses_them_at_once() {
        let t = HeapTopic::new(4, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("processors", 1, alive).unwrap();
        let (m1, own1) = join(&t, g, "worker-1", 11);
        assert_eq!(parts(&own1), vec![0, 1, 2, 3]);
        let (m2, own2) = join(&t, g, "worker-2", 12);
        let own1 = t.ctrl.assignment(g, m1, &all).unwrap();
        assert_eq!(own1.len(), 2);
        assert_eq!(own2.len(), 2);
        assert_partitioned(&t, g, &[m1, m2]);
        // worker-1 keeps what it still owns: only two partitions moved.
        assert_eq!(t.ctrl.coord_stats(g).moved, 6);
        let generation = t.ctrl.generation(g);

        // worker-2's process dies: the next look evicts it and hands its
        // partitions to worker-1, whatever the session timeout.
        let dead = |t: u64| t == 12;
        assert!(t.ctrl.needs_rebalance(g, 1, &dead, &all));
        let r = t.ctrl.evict_members(g, 11, 1, dead, &all).unwrap().unwrap();
        assert_eq!((r.evicted_dead, r.evicted_silent, r.moved), (1, 0, 2));
        assert_eq!(t.ctrl.heartbeat(g, m1, 11, 2).unwrap(), generation + 1);
        assert_eq!(
            parts(&t.ctrl.assignment(g, m1, &all).unwrap()),
            vec![0, 1, 2, 3]
        );
        assert_eq!(t.ctrl.heartbeat(g, m2, 12, 2), Err(TopicError::NotMember));
        assert_eq!(t.ctrl.evict_members(g, 11, 3, dead, &all).unwrap(), None);
    }

    #[test]
    fn a_moved_partition_refuses_the_old_owners_commit() {
        let t = HeapTopic::new(2, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let (_, own1) = join(&t, g, "a", 11);
        assert_eq!(own1.len(), 2);
        t.ctrl
            .commit_owned(g, &all[1], own1[1], 3, &NoFutex)
            .unwrap();
        let (_, own2) = join(&t, g, "b", 12);
        let moved = own2[0];
        let stale = own1[moved.partition as usize];
        let p = &all[moved.partition as usize];
        let before = p.cursor(g);
        assert_eq!(
            t.ctrl.commit_owned(g, p, stale, before + 5, &NoFutex),
            Err(TopicError::Fenced {
                partition: moved.partition
            })
        );
        assert_eq!(p.cursor(g), before, "a fenced commit moves nothing");
        t.ctrl
            .commit_owned(g, p, moved, before + 5, &NoFutex)
            .unwrap();
        assert_eq!(p.cursor(g), before + 5);
        // The partition a kept is still committable by it.
        let kept = own1[1 - moved.partition as usize];
        t.ctrl
            .commit_owned(g, &all[kept.partition as usize], kept, 4, &NoFutex)
            .unwrap();
    }

    #[test]
    fn a_silent_member_times_out_and_its_entry_is_never_its_again() {
        let t = HeapTopic::new(4, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let (a, own_a) = t
            .ctrl
            .claim_member(g, "a", 11, 0, 1_000, alive, &all)
            .unwrap();
        let (b, _) = t
            .ctrl
            .claim_member(g, "b", 12, 0, 60_000, alive, &all)
            .unwrap();
        // Each member has its own timeout: b's minute does not shorten
        // a's second, nor the other way round.
        t.ctrl.heartbeat(g, b, 12, 1_500).unwrap();
        assert!(!t.ctrl.needs_rebalance(g, 900, &alive, &all));
        let r = t
            .ctrl
            .evict_members(g, 12, 1_500, alive, &all)
            .unwrap()
            .unwrap();
        assert_eq!((r.evicted_dead, r.evicted_silent), (0, 1));
        assert_eq!(t.ctrl.assignment(g, b, &all).unwrap().len(), 4);
        assert_eq!(
            t.ctrl.heartbeat(g, a, 11, 1_500),
            Err(TopicError::NotMember)
        );

        // c takes a's old entry: a's identity sees none of c's partitions,
        // and a's old owner words commit nothing.
        let (c, own_c) = t
            .ctrl
            .claim_member(g, "c", 13, 1_600, SESSION, alive, &all)
            .unwrap();
        assert_eq!(c.slot(), a.slot(), "the entry is reused");
        assert_eq!(t.ctrl.assignment(g, a, &all), Err(TopicError::NotMember));
        for old in &own_a {
            let p = &all[old.partition as usize];
            assert!(t.ctrl.commit_owned(g, p, *old, 7, &NoFutex).is_err());
        }
        assert!(
            own_c.iter().all(|o| !own_a.contains(o)),
            "no owner word issued twice"
        );
        assert_partitioned(&t, g, &[b, c]);
    }

    #[test]
    fn a_live_name_is_kept_and_a_dead_or_silent_one_taken_over() {
        let t = HeapTopic::new(3, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let (a, _) = t
            .ctrl
            .claim_member(g, "a", 11, 0, 1_000, alive, &all)
            .unwrap();
        assert_eq!(
            t.ctrl.claim_member(g, "a", 13, 500, 1_000, alive, &all),
            Err(TopicError::MemberTaken)
        );
        // Silent past its timeout (a stopped process, say): taken over.
        let (a2, own) = t
            .ctrl
            .claim_member(g, "a", 13, 2_000, 1_000, alive, &all)
            .unwrap();
        assert_eq!(own.len(), 3);
        assert_ne!(a2, a);
        // Dead: taken over at once.
        let dead13 = |t: u64| t == 13;
        let (a3, own) = t
            .ctrl
            .claim_member(g, "a", 14, 2_001, 1_000, dead13, &all)
            .unwrap();
        assert_eq!(own.len(), 3);
        assert_eq!(
            t.ctrl.heartbeat(g, a2, 13, 2_002),
            Err(TopicError::NotMember)
        );
        let names: Vec<String> = t
            .ctrl
            .group_members(g)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, vec!["a".to_string()]);
        assert_eq!(t.ctrl.coord_stats(g).evicted_dead, 1);
        assert_eq!(t.ctrl.coord_stats(g).evicted_silent, 1);
        assert_partitioned(&t, g, &[a3]);
    }

    #[test]
    fn a_clean_leave_hands_partitions_over_and_bad_names_are_refused() {
        let t = HeapTopic::new(4, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let (a, _) = join(&t, g, "a", 11);
        let (b, _) = join(&t, g, "b", 12);
        t.ctrl.leave_member(g, b, 12, 1, alive, &all).unwrap();
        assert_eq!(t.ctrl.assignment(g, a, &all).unwrap().len(), 4);
        assert_partitioned(&t, g, &[a]);
        assert_eq!(
            t.ctrl.claim_member(g, "", 11, 1, SESSION, alive, &all),
            Err(TopicError::BadMemberName)
        );
        let long = "x".repeat(MEMBER_NAME_MAX + 1);
        assert_eq!(
            t.ctrl.claim_member(g, &long, 11, 1, SESSION, alive, &all),
            Err(TopicError::BadMemberName)
        );
        t.ctrl.leave_member(g, a, 11, 2, alive, &all).unwrap();
        assert!(all.iter().all(|p| t.ctrl.owner(g, p).is_none()));
        assert!(
            !t.ctrl.needs_rebalance(g, 3, &alive, &all),
            "no member, nothing to own"
        );
    }

    #[test]
    fn shares_stay_even_as_members_come_and_go() {
        let t = HeapTopic::new(7, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let mut members = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            members.push(join(&t, g, name, 11 + i as u64).0);
        }
        let counts = |ms: &[MemberId]| {
            let mut c: Vec<usize> = ms
                .iter()
                .map(|&m| t.ctrl.assignment(g, m, &all).unwrap().len())
                .collect();
            c.sort_unstable();
            c
        };
        assert_eq!(counts(&members), vec![2, 2, 3]);
        assert_partitioned(&t, g, &members);
        let dead = |t: u64| t == 12;
        t.ctrl.evict_members(g, 11, 1, dead, &all).unwrap();
        let left = [members[0], members[2]];
        assert_eq!(counts(&left), vec![3, 4]);
        assert_partitioned(&t, g, &left);
    }

    #[test]
    fn a_rebalance_cut_short_is_seen_and_redone_with_a_fresh_generation() {
        let t = HeapTopic::new(4, 8, 8, Overflow::Overwrite);
        let all = t.partitions();
        let g = t.ctrl.group("g", 1, alive).unwrap();
        let (a, _) = join(&t, g, "a", 11);
        let (b, own_b) = join(&t, g, "b", 12);
        let generation = t.ctrl.generation(g);
        // A rebalancer dies after marking `seq` odd and clearing b's entry,
        // before it hands b's partitions out.
        let coord = t.ctrl.coord(g);
        coord.seq.store(2 * (generation + 1) - 1, Ordering::Release);
        coord.members[b.slot()].clear();
        assert_eq!(t.ctrl.assignment(g, a, &all), Err(TopicError::Rebalancing));
        assert!(t.ctrl.needs_rebalance(g, 1, &alive, &all));
        let r = t
            .ctrl
            .evict_members(g, 11, 1, alive, &all)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.generation,
            generation + 2,
            "the cut-short generation is skipped"
        );
        assert_eq!(t.ctrl.coord_stats(g).repaired, 1);
        assert_eq!(t.ctrl.assignment(g, a, &all).unwrap().len(), 4);
        assert!(own_b.iter().all(|o| {
            t.ctrl
                .commit_owned(g, &all[o.partition as usize], *o, 1, &NoFutex)
                .is_err()
        }));

        // Cut short after clearing an entry but before `seq` was marked:
        // the partitions naming the free entry give it away.
        let (c, _) = t
            .ctrl
            .claim_member(g, "c", 13, 2, SESSION, alive, &all)
            .unwrap();
        coord.members[c.slot()].clear();
        assert!(t.ctrl.needs_rebalance(g, 3, &alive, &all));
        t.ctrl
            .evict_members(g, 11, 3, alive, &all)
            .unwrap()
            .unwrap();
        assert_partitioned(&t, g, &[a]);
    }
}
