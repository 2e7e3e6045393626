//! Who may talk to an export: the MAC mask list (command 2) and the reservation list
//! (command 3). Both are enforced here for every frame; the kernel mirrors the mask list.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use aoe_common::maps::MAX_MASKS;
use aoe_common::wire::mask::{
    Directive, DCMD_ADD, DCMD_DELETE, DCMD_NONE, MERROR_BAD_DCMD, MERROR_LIST_FULL,
};
use aoe_common::wire::reserve::{RCMD_FORCE_SET, RCMD_READ, RCMD_SET};
use aoe_common::wire::{AoeError, Mac};

/// Most MACs in a reservation (what fits in one 1500-byte frame is far more; keep it small).
pub const MAX_RESERVE: usize = 32;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lists {
    pub masks: Vec<Mac>,
    pub reserve: Vec<Mac>,
}

impl Lists {
    /// Apply mask directives in order; stop at the first failing one (the ones before it
    /// stay applied, as the protocol's reply says).
    pub fn edit_masks(
        &mut self,
        directives: impl Iterator<Item = Directive>,
    ) -> Result<(), MaskEditError> {
        for (i, d) in directives.enumerate() {
            let fail = |merror| MaskEditError {
                merror,
                index: i as u8,
            };
            match d.dcmd {
                DCMD_NONE => {}
                DCMD_ADD => {
                    if !self.masks.contains(&d.mac) {
                        if self.masks.len() >= MAX_MASKS {
                            return Err(fail(MERROR_LIST_FULL));
                        }
                        self.masks.push(d.mac);
                    }
                }
                DCMD_DELETE => self.masks.retain(|m| *m != d.mac),
                _ => return Err(fail(MERROR_BAD_DCMD)),
            }
        }
        Ok(())
    }

    /// Reserve/Release from `src`. Returns the list after the command.
    pub fn reserve(
        &mut self,
        rcmd: u8,
        src: &Mac,
        macs: impl Iterator<Item = Mac>,
    ) -> Result<Vec<Mac>, AoeError> {
        match rcmd {
            RCMD_READ => {}
            RCMD_SET | RCMD_FORCE_SET => {
                if rcmd == RCMD_SET && !self.reserve.is_empty() && !self.reserve.contains(src) {
                    return Err(AoeError::TargetReserved);
                }
                let mut new: Vec<Mac> = Vec::new();
                for m in macs {
                    if new.len() >= MAX_RESERVE {
                        return Err(AoeError::BadArgument);
                    }
                    if !new.contains(&m) {
                        new.push(m);
                    }
                }
                self.reserve = new;
            }
            _ => return Err(AoeError::BadArgument),
        }
        Ok(self.reserve.clone())
    }
}

/// The access lists of one export.
#[derive(Debug, Default)]
pub struct Access {
    lists: RwLock<Lists>,
    /// True while either list is non-empty: the hot path skips the lock otherwise.
    restricted: AtomicBool,
}

/// A failed mask edit: the merror code and the index of the failing directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskEditError {
    pub merror: u8,
    pub index: u8,
}

impl Access {
    pub fn new(masks: Vec<Mac>) -> Self {
        let a = Access::default();
        a.restricted.store(!masks.is_empty(), Ordering::Release);
        a.lists.write().unwrap().masks = masks;
        a
    }

    fn update_restricted(&self, l: &Lists) {
        self.restricted.store(
            !l.masks.is_empty() || !l.reserve.is_empty(),
            Ordering::Release,
        );
    }

    pub fn snapshot(&self) -> Lists {
        self.lists.read().unwrap().clone()
    }

    /// May `mac` talk to the export at all (mask list)?
    pub fn mask_allows(&self, mac: &Mac) -> bool {
        if !self.restricted.load(Ordering::Acquire) {
            return true;
        }
        let l = self.lists.read().unwrap();
        l.masks.is_empty() || l.masks.contains(mac)
    }

    /// May `mac` issue ATA commands (reservation)?
    pub fn reservation_allows(&self, mac: &Mac) -> bool {
        if !self.restricted.load(Ordering::Acquire) {
            return true;
        }
        let l = self.lists.read().unwrap();
        l.reserve.is_empty() || l.reserve.contains(mac)
    }

    /// Apply mask directives in order; stop at the first failing one.
    pub fn edit_masks(
        &self,
        directives: impl Iterator<Item = Directive>,
    ) -> Result<(), MaskEditError> {
        let mut l = self.lists.write().unwrap();
        let result = l.edit_masks(directives);
        self.update_restricted(&l);
        result
    }

    /// Replace both lists (control plane).
    pub fn set_lists(&self, lists: Lists) {
        let mut l = self.lists.write().unwrap();
        *l = lists;
        self.update_restricted(&l);
    }

    /// Replace the mask list (control plane).
    pub fn set_masks(&self, masks: Vec<Mac>) {
        let mut l = self.lists.write().unwrap();
        l.masks = masks;
        self.update_restricted(&l);
    }

    /// Reserve/Release from `src`. Returns the list after the command.
    pub fn reserve(
        &self,
        rcmd: u8,
        src: &Mac,
        macs: impl Iterator<Item = Mac>,
    ) -> Result<Vec<Mac>, AoeError> {
        let mut l = self.lists.write().unwrap();
        let result = l.reserve(rcmd, src, macs);
        self.update_restricted(&l);
        result
    }

    /// Clear the reservation (control plane).
    pub fn clear_reservation(&self) {
        let mut l = self.lists.write().unwrap();
        l.reserve.clear();
        self.update_restricted(&l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn masks_add_delete_and_enforce() {
        let a = Access::default();
        assert!(a.mask_allows(&B));
        a.edit_masks(
            [Directive {
                dcmd: DCMD_ADD,
                mac: A,
            }]
            .into_iter(),
        )
        .unwrap();
        assert!(a.mask_allows(&A));
        assert!(!a.mask_allows(&B));
        a.edit_masks(
            [Directive {
                dcmd: DCMD_DELETE,
                mac: A,
            }]
            .into_iter(),
        )
        .unwrap();
        assert!(a.mask_allows(&B));
    }

    #[test]
    fn bad_directive_stops_with_index() {
        let a = Access::default();
        let e = a
            .edit_masks(
                [
                    Directive {
                        dcmd: DCMD_ADD,
                        mac: A,
                    },
                    Directive { dcmd: 9, mac: B },
                    Directive {
                        dcmd: DCMD_ADD,
                        mac: B,
                    },
                ]
                .into_iter(),
            )
            .unwrap_err();
        assert_eq!(
            e,
            MaskEditError {
                merror: MERROR_BAD_DCMD,
                index: 1
            }
        );
        assert_eq!(a.snapshot().masks, vec![A]);
    }

    #[test]
    fn list_full() {
        let a = Access::default();
        let many = (0..=MAX_MASKS as u8).map(|i| Directive {
            dcmd: DCMD_ADD,
            mac: [2, 0, 0, 0, 1, i],
        });
        let e = a.edit_masks(many).unwrap_err();
        assert_eq!(e.merror, MERROR_LIST_FULL);
        assert_eq!(usize::from(e.index), MAX_MASKS);
    }

    #[test]
    fn reservations() {
        let a = Access::default();
        assert_eq!(a.reserve(RCMD_SET, &A, [A].into_iter()).unwrap(), vec![A]);
        assert!(a.reservation_allows(&A));
        assert!(!a.reservation_allows(&B));
        assert_eq!(
            a.reserve(RCMD_SET, &B, [B].into_iter()).unwrap_err(),
            AoeError::TargetReserved
        );
        assert_eq!(
            a.reserve(RCMD_FORCE_SET, &B, [B].into_iter()).unwrap(),
            vec![B]
        );
        // Release by the holder: set with no MACs.
        assert!(a.reserve(RCMD_SET, &B, [].into_iter()).unwrap().is_empty());
        assert!(a.reservation_allows(&A));
    }
}
