//! Locking a `std::sync::Mutex` that guards plain data: a panic while it was held cannot leave
//! the data half-updated in a way later holders would misread (every section is a short,
//! complete update), so a poisoned lock is taken over instead of propagating the panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
