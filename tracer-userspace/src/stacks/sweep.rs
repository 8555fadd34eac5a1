//! Interned stacks that nothing refers to any more are dropped now and then, so a process
//! that keeps producing new call paths (generated code, a plugin loaded and unloaded) does
//! not grow the tracer for weeks. Ids are never reused: a dropped id's slot keeps an empty
//! stack, and the same path met again gets a new id.

use std::{collections::HashSet, sync::Arc};

use super::StackStore;

impl StackStore {
    /// Drops the frames (and cached symbols) of every interned stack whose id is not in
    /// `in_use`; returns how many were dropped. O(stacks ever interned).
    pub(crate) fn drop_unused(&mut self, in_use: &HashSet<u32>) -> usize {
        let mut dropped = 0;
        for (id, slot) in self.stacks.iter_mut().enumerate() {
            if !slot.is_empty() && !in_use.contains(&(id as u32)) {
                *slot = Arc::from([]);
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.stack_ids.retain(|_, id| in_use.contains(id));
            self.symbolizer.retain(|stack| in_use.contains(&stack.id));
            self.memo.retain_ids(|id| in_use.contains(&id));
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        events::{Event, EventBody, Header},
        stacks::KernelStacks,
    };

    struct Table(HashMap<u32, Vec<u64>>);

    impl KernelStacks for Table {
        fn stack(&self, id: u32) -> Option<Vec<u64>> {
            self.0.get(&id).cloned()
        }
    }

    #[inline(never)]
    fn marker_function() -> u64 {
        std::hint::black_box(7)
    }

    fn interned(store: &mut StackStore, kernel: &Table, kernel_id: u32) -> crate::model::StackRef {
        let mut event = Event {
            header: Header {
                tgid: std::process::id(),
                tid: std::process::id(),
                stack_id: Some(kernel_id),
                timestamp_ns: 1,
                generation: 0,
            },
            body: EventBody::CwdChanged,
        };
        store.annotate(&mut event, None, kernel);
        event.header.stack().expect("a stack")
    }

    /// A stack nothing uses is dropped, the one in use still symbolizes, and a dropped path
    /// met again gets a new id rather than the old one.
    #[test]
    fn drops_unused_stacks_without_reusing_ids() {
        let mut store = StackStore::new();
        store.capture(std::process::id());
        let marker = marker_function as fn() -> u64 as usize as u64;
        let kernel = Table(HashMap::from_iter([
            (5, vec![marker, 0x10]),
            (6, vec![marker + 1, 0x20]),
        ]));
        let kept = interned(&mut store, &kernel, 5);
        let gone = interned(&mut store, &kernel, 6);
        assert_ne!(kept.id, gone.id);
        assert!(!store.frames(gone).is_empty());

        assert_eq!(store.drop_unused(&HashSet::from([kept.id])), 1);
        assert!(store.frames(gone).is_empty());
        assert!(store.frames(kept).iter().any(|f| {
            f.symbol
                .as_deref()
                .is_some_and(|s| s.contains("marker_function"))
        }));
        let again = interned(&mut store, &kernel, 6);
        assert!(again.id > gone.id, "{} reused {}", again.id, gone.id);
        assert_eq!(store.drop_unused(&HashSet::from([kept.id, again.id])), 0);
    }
}
