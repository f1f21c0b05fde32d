//! The endpoint tables: slots that keep their index for as long as their
//! endpoint lives, and a generation that changes whenever a slot is emptied.
//!
//! An endpoint's index is what the relay and epoll know it by. A reload
//! keeps the slot of every endpoint it carries over (with its fd, its epoll
//! registration and its place in the relay), empties the slots of those
//! that go and puts new ones in free slots. Epoll tokens carry the
//! generation as well as the index, so an event that was already in a batch
//! when its endpoint went away or was replaced names a generation the slot
//! no longer has, and `get` drops it: no event reaches an endpoint it was
//! not registered for.

use std::ops::{Index, IndexMut};

use crate::event_loop::SlotKey;

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(super) struct Slots<T> {
    entries: Vec<Entry<T>>,
    /// Empty slots, reused last-freed first.
    free: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Slots<T> {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

/// What `Slots::replace_all` did: where each new value went, and the old
/// values that left, by the index they had.
#[derive(Debug)]
pub(super) struct Placed<T> {
    pub(super) at: Vec<usize>,
    pub(super) removed: Vec<(usize, T)>,
}

impl<T> Slots<T> {
    /// The values in slots 0, 1, 2…
    pub(super) fn from_values(values: Vec<T>) -> Slots<T> {
        Slots {
            entries: values
                .into_iter()
                .map(|value| Entry {
                    generation: 0,
                    value: Some(value),
                })
                .collect(),
            free: Vec::new(),
        }
    }

    /// How many slots there are, full or empty: tables indexed by slot
    /// (the relay's) are this long.
    pub(super) fn slot_count(&self) -> usize {
        self.entries.len()
    }

    /// The key an event for the endpoint in `index` carries.
    pub(super) fn key(&self, index: usize) -> SlotKey {
        let generation = self.entries.get(index).map_or(0, |e| e.generation);
        SlotKey {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation,
        }
    }

    /// The slot `key` names, if it still holds what it held when the key
    /// was made.
    pub(super) fn live(&self, key: SlotKey) -> Option<usize> {
        let index = usize::try_from(key.index).ok()?;
        let entry = self.entries.get(index)?;
        (entry.generation == key.generation && entry.value.is_some()).then_some(index)
    }

    /// The indices of full slots, in order (collected, so that the caller
    /// may change the table while it goes through them).
    pub(super) fn ids(&self) -> Vec<usize> {
        self.iter().map(|(i, _)| i).collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.value.as_ref()?)))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|e| e.value.as_mut())
    }

    fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.entries[index].value = Some(value);
                index
            }
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    value: Some(value),
                });
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<T> {
        let entry = self.entries.get_mut(index)?;
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1) & crate::event_loop::GENERATION_MASK;
        self.free.push(index);
        Some(value)
    }

    /// Puts `values` in place of the table's: value `n` takes the slot
    /// `keep[n]` names, with its generation (the same endpoint, carried
    /// over), or else a free slot; every slot no value keeps is emptied
    /// first, its generation moving on.
    pub(super) fn replace_all(&mut self, values: Vec<T>, keep: &[Option<usize>]) -> Placed<T> {
        let mut kept = vec![false; self.entries.len()];
        for &s in keep.iter().flatten() {
            if let Some(k) = kept.get_mut(s) {
                *k = true;
            }
        }
        let mut removed = Vec::new();
        for (index, kept) in kept.into_iter().enumerate() {
            if !kept && let Some(value) = self.remove(index) {
                removed.push((index, value));
            }
        }
        let at = values
            .into_iter()
            .zip(keep.iter().copied().chain(std::iter::repeat(None)))
            .map(|(value, keep)| match keep {
                Some(s) if s < self.entries.len() => {
                    self.entries[s].value = Some(value);
                    s
                }
                _ => self.insert(value),
            })
            .collect();
        Placed { at, removed }
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = T;

    /// The endpoint in slot `index`. Indices come from the relay or from a
    /// live key, which only ever name full slots.
    fn index(&self, index: usize) -> &T {
        match self.entries[index].value.as_ref() {
            Some(value) => value,
            None => unreachable!("slot {index} is empty"),
        }
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        match self.entries[index].value.as_mut() {
            Some(value) => value,
            None => unreachable!("slot {index} is empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_value_keeps_its_slot_and_its_key() {
        let mut slots = Slots::from_values(vec!["a", "b", "c"]);
        let b = slots.key(1);
        let placed = slots.replace_all(vec!["B", "d"], &[Some(1), None]);
        assert_eq!(placed.at[0], 1);
        assert_eq!(slots.live(b), Some(1));
        assert_eq!(slots[1], "B");
        let mut removed = placed.removed;
        removed.sort();
        assert_eq!(removed, vec![(0, "a"), (2, "c")]);
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_key() {
        let mut slots = Slots::from_values(vec!["a", "b"]);
        let a = slots.key(0);
        let placed = slots.replace_all(vec!["b", "x"], &[Some(1), None]);
        // "x" took the slot "a" left, under a new generation.
        assert_eq!(placed.at[1], 0);
        assert_eq!(slots[0], "x");
        assert_eq!(slots.live(a), None);
        assert_eq!(slots.live(slots.key(0)), Some(0));
    }

    #[test]
    fn keys_of_empty_or_missing_slots_are_not_live() {
        let mut slots = Slots::from_values(vec![1, 2]);
        let two = slots.key(1);
        slots.replace_all(vec![1], &[Some(0)]);
        assert_eq!(slots.live(two), None);
        assert_eq!(slots.live(slots.key(1)), None);
        assert_eq!(slots.ids(), vec![0]);
        assert_eq!(
            slots.live(SlotKey {
                index: 7,
                generation: 0
            }),
            None
        );
    }
}
