//! The selected mailbox's UIDs, ascending, kept as runs of consecutive UIDs: a mailbox whose
//! UIDs have few gaps (the usual case: UIDs are given out one after another, and only
//! expunges leave holes) costs a few octets whatever its size. A message's sequence number is
//! its place in the list plus one (RFC 9051 2.3.1.2).

/// Consecutive UIDs `first ..= first + count - 1`, of which `first` is at `place`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    count: u32,
    place: u32,
}

impl Run {
    /// The last UID of the run (u64: a run may end at u32::MAX).
    fn last(&self) -> u64 {
        u64::from(self.first) + u64::from(self.count) - 1
    }
}

/// Ascending UIDs, each once. Runs are never empty and never touch (a run never begins right
/// after the one before it ends).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uids {
    runs: Vec<Run>,
    len: usize,
}

impl Uids {
    /// From UIDs in any order (duplicates dropped).
    pub fn new(mut uids: Vec<u32>) -> Self {
        uids.sort_unstable();
        uids.dedup();
        let mut list = Uids::default();
        for uid in uids {
            list.push(uid);
        }
        list.runs.shrink_to_fit();
        list
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|r| r.last() as u32)
    }

    /// The UID at `place` (which must be below `len`).
    pub fn get(&self, place: usize) -> u32 {
        let i = self.runs.partition_point(|r| r.place as usize <= place) - 1;
        let run = self.runs[i];
        run.first + (place - run.place as usize) as u32
    }

    /// The place of `uid`, if it is here.
    pub fn position(&self, uid: u32) -> Option<usize> {
        let i = self
            .runs
            .partition_point(|r| r.first <= uid)
            .checked_sub(1)?;
        let run = self.runs[i];
        (u64::from(uid) <= run.last()).then(|| (run.place + (uid - run.first)) as usize)
    }

    /// How many UIDs are at most `uid`.
    pub fn count_up_to(&self, uid: u32) -> usize {
        let Some(i) = self.runs.partition_point(|r| r.first <= uid).checked_sub(1) else {
            return 0;
        };
        let run = self.runs[i];
        run.place as usize
            + (u64::from(uid) - u64::from(run.first) + 1).min(u64::from(run.count)) as usize
    }

    /// How many UIDs are below `uid`.
    pub fn count_below(&self, uid: u32) -> usize {
        match uid.checked_sub(1) {
            Some(below) => self.count_up_to(below),
            None => 0,
        }
    }

    /// Appends `uid`, which must be above every UID here.
    pub fn push(&mut self, uid: u32) {
        debug_assert!(self.last().is_none_or(|last| uid > last));
        match self.runs.last_mut() {
            Some(run) if run.last() + 1 == u64::from(uid) => run.count += 1,
            _ => self.runs.push(Run {
                first: uid,
                count: 1,
                place: self.len as u32,
            }),
        }
        self.len += 1;
    }

    /// Takes out the UID at `place` (below `len`); those after it move down one place.
    pub fn remove(&mut self, place: usize) -> u32 {
        let i = self.runs.partition_point(|r| r.place as usize <= place) - 1;
        let run = self.runs[i];
        let offset = (place - run.place as usize) as u32;
        let uid = run.first + offset;
        let mut next = i + 1;
        if run.count == 1 {
            self.runs.remove(i);
            next = i;
        } else if offset == 0 {
            // The next UID takes this one's place.
            self.runs[i].first += 1;
            self.runs[i].count -= 1;
        } else if offset == run.count - 1 {
            self.runs[i].count -= 1;
        } else {
            // The run splits around the UID taken out.
            self.runs[i].count = offset;
            self.runs.insert(
                i + 1,
                Run {
                    first: uid + 1,
                    count: run.count - offset - 1,
                    place: run.place + offset + 1,
                },
            );
            next = i + 1;
        }
        for r in &mut self.runs[next..] {
            r.place -= 1;
        }
        self.len -= 1;
        uid
    }

    /// Every UID, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (u64::from(r.first)..=r.last()).map(|u| u as u32))
    }

    /// The UIDs from `lo` to `hi` (inclusive) that are not here, as ascending ranges. Costs
    /// the runs within them, never the width of the range.
    pub fn gaps(&self, lo: u32, hi: u32) -> Vec<(u32, u32)> {
        let mut gaps = Vec::new();
        let mut next = u64::from(lo);
        let from = self.runs.partition_point(|r| r.last() < u64::from(lo));
        for run in &self.runs[from..] {
            if u64::from(run.first) > u64::from(hi) {
                break;
            }
            if u64::from(run.first) > next {
                gaps.push((next as u32, run.first - 1));
            }
            next = run.last() + 1;
        }
        if next <= u64::from(hi) {
            gaps.push((next as u32, hi));
        }
        gaps
    }

    /// Octets this list holds on the heap.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Run>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_answer_like_the_plain_list() {
        let plain = vec![1, 2, 3, 7, 8, 20, u32::MAX - 1, u32::MAX];
        let list = Uids::new(plain.clone());
        assert_eq!(list.len(), plain.len());
        assert_eq!(list.iter().collect::<Vec<_>>(), plain);
        for (place, &uid) in plain.iter().enumerate() {
            assert_eq!(list.get(place), uid);
            assert_eq!(list.position(uid), Some(place));
        }
        assert_eq!(list.position(5), None);
        assert_eq!(list.count_up_to(0), 0);
        assert_eq!(list.count_up_to(7), 4);
        assert_eq!(list.count_below(7), 3);
        assert_eq!(list.count_up_to(u32::MAX), 8);
        assert_eq!(list.count_below(1), 0);
        assert_eq!(list.last(), Some(u32::MAX));
        assert_eq!(list.gaps(1, 25), vec![(4, 6), (9, 19), (21, 25)]);
        assert_eq!(
            list.gaps(u32::MAX - 3, u32::MAX),
            vec![(u32::MAX - 3, u32::MAX - 2)]
        );
        assert_eq!(Uids::default().gaps(1, 3), vec![(1, 3)]);
    }

    #[test]
    fn a_dense_mailbox_is_one_run_and_removal_splits_it() {
        let mut list = Uids::new((1..=10_000).collect());
        assert_eq!(list.runs.len(), 1);
        assert!(list.heap_bytes() <= 16);
        assert_eq!(list.remove(4_999), 5_000);
        assert_eq!(list.runs.len(), 2);
        assert_eq!(list.get(4_999), 5_001);
        assert_eq!(list.position(10_000), Some(9_998));
        assert_eq!(list.remove(0), 1);
        assert_eq!(list.remove(list.len() - 1), 10_000);
        assert_eq!(list.len(), 9_997);
        assert_eq!(list.iter().next(), Some(2));
        list.push(10_002);
        assert_eq!(list.last(), Some(10_002));
        assert_eq!(list.position(10_002), Some(9_997));
    }

    /// Every operation, over many random lists, against a plain sorted vector.
    #[test]
    fn random_edits_keep_both_lists_alike() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut plain: Vec<u32> = (0..random(60)).map(|_| 1 + random(80) as u32).collect();
            plain.sort_unstable();
            plain.dedup();
            let mut list = Uids::new(plain.clone());
            for _ in 0..40 {
                match random(3) {
                    0 if !plain.is_empty() => {
                        let place = random(plain.len() as u64) as usize;
                        assert_eq!(list.remove(place), plain.remove(place));
                    }
                    1 => {
                        let uid = plain.last().copied().unwrap_or(0) + 1 + random(3) as u32;
                        plain.push(uid);
                        list.push(uid);
                    }
                    _ => {}
                }
                assert_eq!(list.iter().collect::<Vec<_>>(), plain);
                assert_eq!(list.len(), plain.len());
                let probe = random(100) as u32;
                assert_eq!(list.position(probe), plain.binary_search(&probe).ok());
                assert_eq!(
                    list.count_up_to(probe),
                    plain.partition_point(|&u| u <= probe)
                );
                assert_eq!(
                    list.count_below(probe),
                    plain.partition_point(|&u| u < probe)
                );
                let (lo, hi) = (1 + random(50) as u32, 50 + random(60) as u32);
                let expected: Vec<u32> = (lo..=hi)
                    .filter(|u| plain.binary_search(u).is_err())
                    .collect();
                let got: Vec<u32> = list
                    .gaps(lo, hi)
                    .into_iter()
                    .flat_map(|(a, b)| a..=b)
                    .collect();
                assert_eq!(got, expected);
            }
        }
    }
}
