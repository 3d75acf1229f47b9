//! Queue order of idle connections: FIFO (the default) rotates through them, so all stay warm;
//! LIFO reuses the most recently returned, so under steady light load the others stay idle and
//! `idle_timeout` shrinks the pool.

use std::time::{Duration, Instant};

use gracepool::{Pool, QueueOrder};
use gracepool_testkit::{Counting, ExecRuntime};

fn pool(m: &Counting, rt: &ExecRuntime, order: QueueOrder) -> Pool<Counting> {
    Pool::builder(m.clone())
        .max_size(4)
        .queue_order(order)
        .idle_timeout(Duration::from_millis(200))
        .maintenance_interval(Duration::from_millis(50))
        .runtime(rt.handle())
        .build()
        .unwrap()
}

/// Takes four connections at once and gives them back in id order.
async fn warm_four(pool: &Pool<Counting>) {
    let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
    let (c, d) = futures_lite::future::zip(pool.get(), pool.get()).await;
    let mut all = vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    all.sort_by_key(|c| c.id);
    for conn in all {
        drop(conn);
    }
}

#[test]
fn fifo_takes_the_longest_idle_lifo_the_last_returned() {
    for (order, want) in [(QueueOrder::Fifo, 1), (QueueOrder::Lifo, 4)] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = pool(&m, &rt, order);
        rt.block_on(async {
            warm_four(&pool).await;
            assert_eq!(pool.get().await.unwrap().id, want, "{order:?}");
            pool.close().await;
        });
        m.assert_balanced();
    }
}

#[test]
fn lifo_lets_idle_timeout_shrink_a_lightly_loaded_pool() {
    for (order, left) in [(QueueOrder::Fifo, 4), (QueueOrder::Lifo, 1)] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = pool(&m, &rt, order);
        rt.block_on(async {
            warm_four(&pool).await;
            // One caller at a time, every 10 ms, for a second: far below four connections' worth.
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                drop(pool.get().await.unwrap());
                async_io::Timer::after(Duration::from_millis(10)).await;
            }
            assert_eq!(pool.status().size, left, "{order:?}: {:?}", pool.status());
            pool.close().await;
        });
        m.assert_balanced();
    }
}
