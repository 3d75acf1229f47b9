//! What a handle can tell about its pool, and a weak handle that does not keep the pool open.

use std::fmt;
use std::sync::{Arc, Weak};

use crate::manager::Manager;
use crate::pool::Pool;
use crate::shared::Shared;
use crate::status::Status;

impl<M: Manager> Pool<M> {
    /// The manager the pool was built with.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }

    /// Whether the pool's close has started (it is closing or closed): from then on `get()`
    /// fails with [`Error::Closed`](crate::Error::Closed) or
    /// [`Error::RuntimeGone`](crate::Error::RuntimeGone).
    pub fn is_closed(&self) -> bool {
        !self.shared.ledger.is_running()
    }

    /// A weak handle: it reads the pool's [`Status`] and can become a [`Pool`] again, but does
    /// not count as a handle. Dropping the last `Pool` closes the pool whatever weak handles
    /// remain, so a metrics sampler holding one never keeps a pool open.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// let sampler = pool.downgrade();
    /// assert_eq!(sampler.status().unwrap().max_size, 4);
    /// assert!(!pool.is_closed());
    /// drop(pool); // the last handle: the pool closes, the weak one does not keep it
    /// assert!(sampler.upgrade().is_none());
    /// # });
    /// ```
    pub fn downgrade(&self) -> WeakPool<M> {
        WeakPool {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// A weak handle to a [`Pool`], made by [`Pool::downgrade`]. Cheap to clone, `Send + Sync`.
pub struct WeakPool<M: Manager> {
    shared: Weak<Shared<M>>,
}

impl<M: Manager> WeakPool<M> {
    /// A [`Pool`] handle again, unless the last one was already dropped (the pool is closing
    /// or gone). A pool closed with [`Pool::close`] while handles remain still upgrades, and
    /// says so with [`Pool::is_closed`].
    pub fn upgrade(&self) -> Option<Pool<M>> {
        let shared = self.shared.upgrade()?;
        shared.ledger.try_add_handle().then_some(Pool { shared })
    }

    /// The pool's status, while anything of the pool is left (a closing pool still answers,
    /// with its state); `None` once it is gone. Never keeps the pool open.
    pub fn status(&self) -> Option<Status> {
        self.shared.upgrade().map(|shared| shared.status())
    }
}

impl<M: Manager> Clone for WeakPool<M> {
    fn clone(&self) -> Self {
        WeakPool {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for WeakPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPool")
            .field("status", &self.status())
            .finish()
    }
}
