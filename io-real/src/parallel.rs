//! Blocking work spread over a few scoped threads, for batches of independent `fsync`-bound
//! writes (the device queues them together; one thread would wait for each in turn).

/// `work` on every item, over up to `max_threads` scoped threads in contiguous groups;
/// results in item order. A panic in `work` resumes on the caller.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    max_threads: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    assert!(max_threads > 0, "at least one thread");
    if items.len() <= 1 {
        return items.iter().map(&work).collect();
    }
    let per_thread = items.len().div_ceil(max_threads);
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(per_thread)
            .map(|group| scope.spawn(move || group.iter().map(work).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order_whatever_the_thread_count() {
        let items: Vec<u32> = (0..37).collect();
        for threads in [1, 2, 8, 64] {
            assert_eq!(
                map(&items, threads, |i| i * 2),
                items.iter().map(|i| i * 2).collect::<Vec<_>>()
            );
        }
        assert_eq!(map(&[] as &[u32], 8, |i| *i), Vec::<u32>::new());
    }
}
