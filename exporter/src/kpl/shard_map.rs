//! Which shard a hash key belongs to: the open shards of a stream and their hash key ranges.

use std::sync::Arc;

/// One open shard and the hash keys it owns, both ends inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: Arc<str>,
    pub start: u128,
    pub end: u128,
}

impl Shard {
    pub fn contains(&self, hash_key: u128) -> bool {
        (self.start..=self.end).contains(&hash_key)
    }
}

/// The open shards of a stream, sorted by range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

impl ShardMap {
    /// Builds a map from open shards. Ranges must not overlap; gaps (a map read in the middle of
    /// a reshard) are allowed and simply route nowhere.
    pub fn new(mut shards: Vec<Shard>) -> Result<ShardMap, String> {
        if shards.is_empty() {
            return Err("the stream has no open shards".into());
        }
        shards.sort_by_key(|s| s.start);
        for pair in shards.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(format!(
                    "shards {} and {} overlap; the listing is inconsistent",
                    pair[0].id, pair[1].id
                ));
            }
        }
        Ok(ShardMap { shards })
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Index of the shard owning `hash_key`, if any.
    pub fn index_of(&self, hash_key: u128) -> Option<usize> {
        let i = self.shards.partition_point(|s| s.start <= hash_key);
        let candidate = i.checked_sub(1)?;
        self.shards[candidate]
            .contains(hash_key)
            .then_some(candidate)
    }

    pub fn get(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    pub fn by_id(&self, id: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| &*s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128) -> Shard {
        Shard {
            id: id.into(),
            start,
            end,
        }
    }

    #[test]
    fn finds_the_owning_shard_at_the_edges() {
        let map = ShardMap::new(vec![shard("b", 100, u128::MAX), shard("a", 0, 99)]).unwrap();
        assert_eq!(map.index_of(0), Some(0));
        assert_eq!(map.index_of(99), Some(0));
        assert_eq!(map.index_of(100), Some(1));
        assert_eq!(map.index_of(u128::MAX), Some(1));
        assert_eq!(&*map.get(1).id, "b");
    }

    #[test]
    fn gaps_route_nowhere_and_overlaps_are_refused() {
        let map = ShardMap::new(vec![shard("a", 0, 9), shard("b", 20, 29)]).unwrap();
        assert_eq!(map.index_of(15), None);
        assert_eq!(map.index_of(30), None);
        assert!(ShardMap::new(vec![shard("a", 0, 10), shard("b", 10, 20)]).is_err());
        assert!(ShardMap::new(vec![]).is_err());
    }
}
