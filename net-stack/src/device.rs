//! The smoltcp `Device` between the stack and smoltcp's TCP: IP packets in, IP packets out,
//! in memory. Ethernet framing is ours (see `stack`), so smoltcp runs with `Medium::Ip`.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// In-memory IP device: at most one packet waiting to be received, and an outbound queue
/// whose room is set by the stack before each smoltcp poll.
#[derive(Debug)]
pub(crate) struct IpDevice {
    pub rx: Option<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    /// How many more packets smoltcp may transmit before `transmit` says "no room".
    pub tx_room: usize,
    /// Packets smoltcp emitted in reply to received ones while there was no room.
    pub tx_dropped: u64,
    mtu: usize,
}

impl IpDevice {
    pub(crate) fn new(mtu: usize) -> Self {
        IpDevice {
            rx: None,
            tx: VecDeque::new(),
            tx_room: 0,
            tx_dropped: 0,
            mtu,
        }
    }
}

pub(crate) struct RxToken(Vec<u8>);

pub(crate) struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    room: &'a mut usize,
    dropped: &'a mut u64,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let result = f(&mut buf);
        if *self.room > 0 {
            *self.room -= 1;
            self.tx.push_back(buf);
        } else {
            *self.dropped += 1;
        }
        result
    }
}

impl phy::Device for IpDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((
            RxToken(packet),
            TxToken {
                tx: &mut self.tx,
                room: &mut self.tx_room,
                dropped: &mut self.tx_dropped,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx_room == 0 {
            return None;
        }
        Some(TxToken {
            tx: &mut self.tx,
            room: &mut self.tx_room,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
