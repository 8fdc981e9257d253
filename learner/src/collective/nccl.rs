//! [`Collective`] over NCCL for ranks on separate GPUs (feature `cuda`).
//!
//! Each rank owns one [`NcclGroup`] on its own CUDA device. The communicator is created from a
//! unique id that rank 0 makes ([`NcclUniqueId::new`]) and every rank receives: in memory when
//! the ranks are threads of one process (the learner's rank pool), or over rank 0's TCP
//! endpoint ([`NcclGroup::connect_tcp`], see [`super::rendezvous`]) when they are processes.
//!
//! **Timeouts.** The communicator is non-blocking (`ncclConfig_t.blocking = 0`): creation and
//! every call return at once and this module polls the communicator's async state and a CUDA
//! event recorded after the operation, against a deadline of `timeout` per call. When the
//! deadline passes, or NCCL reports an error, the communicator is aborted (`ncclCommAbort`,
//! which also stops its kernels) and the call fails with [`Error::CollectiveTimeout`] naming
//! the operation, this rank and the timeout. NCCL cannot tell which peer is late, so
//! `missing` lists every other rank. An aborted group fails every later call at once; build a
//! new one. Ranks must issue the same calls in the same order with equal lengths: NCCL does
//! not check this, and a mismatch ends in the timeout. Ranks that are threads of one process
//! can share an [`AbortFlag`]: when one of them aborts, the others abort at their next poll
//! instead of waiting out the timeout (NCCL itself gives a peer no signal).
//!
//! **Streams.** NCCL runs on a stream of its own on the rank's device. Before an operation on
//! a tensor that stream waits for the tensor's stream, so the kernels that produced the
//! tensor come first; the call returns once the operation has completed on the device.
//! Host-buffer calls copy to the device, reduce there and copy back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{
    CudaStream, CudaViewMut, DevicePtrMut, DeviceRepr, DeviceSlice, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::sys;
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};

use super::Collective;
use super::rendezvous::{UNIQUE_ID_BYTES, UniqueIdBytes, exchange_unique_id};
use crate::{Error, Result};

const OP_INIT: &str = "nccl init";
const OP_SUM: &str = "nccl all_reduce_sum";
const OP_SUM_F64: &str = "nccl all_reduce_sum_f64";
const OP_SUM_TENSOR: &str = "nccl all_reduce_sum_tensor";
const OP_BROADCAST: &str = "nccl broadcast";
const OP_REDUCE_SCATTER: &str = "nccl reduce_scatter_sum_tensor";
const OP_ALL_GATHER: &str = "nccl all_gather_tensor";

/// The 128-byte id every rank of one communicator is created from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclUniqueId(UniqueIdBytes);

impl std::fmt::Debug for NcclUniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NcclUniqueId(..)")
    }
}

impl NcclUniqueId {
    /// A fresh id (`ncclGetUniqueId`); rank 0 calls this and hands the bytes to its peers.
    pub fn new() -> Result<Self> {
        let id = raw::unique_id().map_err(|e| nccl_error("ncclGetUniqueId", 0, &e))?;
        Ok(Self(id))
    }

    /// An id received from rank 0.
    pub fn from_bytes(bytes: UniqueIdBytes) -> Self {
        Self(bytes)
    }

    /// The bytes to send to the other ranks.
    pub fn as_bytes(&self) -> &UniqueIdBytes {
        &self.0
    }
}

/// Shared by the groups of ranks that are threads of one process: raising it (directly, or by
/// [`NcclGroup::abort`] on any of them) makes every group that holds it abort at its next
/// poll, including one still being created.
#[derive(Debug, Clone, Default)]
pub struct AbortFlag(Arc<AtomicBool>);

impl AbortFlag {
    /// A flag that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every group holding this flag abort.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag was raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// An NCCL error or CUDA failure as a crate error (a peer's failure reported by NCCL as
/// `ncclRemoteError` counts as a collective mismatch: it is not this rank's own fault).
fn nccl_error(op: &str, rank: usize, reason: &str) -> Error {
    Error::Candle(candle_core::Error::Cuda(
        format!("{op} on rank {rank}: {reason}").into(),
    ))
}

/// How an operation failed (the communicator is aborted for each of these).
enum Failure {
    Timeout,
    /// A peer failed (`ncclRemoteError`).
    Remote(String),
    /// NCCL or CUDA failed on this rank.
    Local(String),
    /// [`NcclGroup::abort`] was called while the operation waited.
    AbortRequested,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Remote(r) => write!(f, "a peer failed: {r}"),
            Failure::Local(r) => f.write_str(r),
            Failure::AbortRequested => f.write_str("aborted"),
        }
    }
}

enum CommState {
    Live(raw::Comm),
    Aborted(String),
}

/// One rank's handle on an NCCL communicator (see the module docs).
pub struct NcclGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    ordinal: usize,
    /// Declared before `stream` so that the communicator is aborted before its stream goes.
    state: Mutex<CommState>,
    /// The stream NCCL runs on (created on the rank's device for this group).
    stream: Arc<CudaStream>,
    abort_requested: AbortFlag,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("cuda", &self.ordinal)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Pause between polls: a few yields first (short collectives finish in microseconds), then
/// sleeps growing to 200 µs so that a long wait does not burn a core.
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self, deadline: Instant) {
        self.0 += 1;
        if self.0 < 64 {
            std::thread::yield_now();
        } else {
            let step = Duration::from_micros(u64::from((self.0 - 63).min(20)) * 10);
            std::thread::sleep(step.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

impl NcclGroup {
    /// Joins the communicator of `world` ranks made from `id` as `rank`, on `device` (a CUDA
    /// device; one rank per GPU). Every rank must call this within `timeout` of the others,
    /// which also bounds every later call.
    pub fn new(
        device: &Device,
        rank: usize,
        world: usize,
        id: &NcclUniqueId,
        timeout: Duration,
    ) -> Result<Self> {
        Self::with_abort_flag(device, rank, world, id, timeout, AbortFlag::new())
    }

    /// [`NcclGroup::new`] with an abort flag shared with the other ranks of this process.
    pub fn with_abort_flag(
        device: &Device,
        rank: usize,
        world: usize,
        id: &NcclUniqueId,
        timeout: Duration,
        abort: AbortFlag,
    ) -> Result<Self> {
        if rank >= world {
            return Err(Error::BadRank { rank, world });
        }
        let Device::Cuda(cuda) = device else {
            return Err(Error::Data {
                context: format!("NCCL group, rank {rank}"),
                reason: format!("needs a CUDA device, found {:?}", device.location()),
            });
        };
        let ctx = cuda.cuda_stream().context().clone();
        let ordinal = ctx.ordinal();
        let cuda_err = |what: &str, e: &dyn std::fmt::Display| {
            nccl_error(OP_INIT, rank, &format!("{what} on cuda:{ordinal}: {e}"))
        };
        ctx.bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", &e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating the NCCL stream", &e))?;
        let deadline = Instant::now() + timeout;
        let comm = raw::Comm::init(rank, world, &id.0)
            .map_err(|e| nccl_error(OP_INIT, rank, &format!("on cuda:{ordinal}: {e}")))?;
        let mut backoff = Backoff(0);
        loop {
            match comm.async_state() {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    drop(comm);
                    return Err(nccl_error(
                        OP_INIT,
                        rank,
                        &format!("on cuda:{ordinal}: {e}"),
                    ));
                }
            }
            if abort.is_raised() {
                drop(comm);
                return Err(Error::CollectiveMismatch {
                    rank,
                    detail: format!("{OP_INIT}: another rank aborted the group"),
                });
            }
            if Instant::now() >= deadline {
                // Dropping the communicator aborts its initialisation.
                drop(comm);
                return Err(Error::CollectiveTimeout {
                    op: OP_INIT,
                    rank,
                    timeout_ms: timeout.as_millis(),
                    missing: (0..world).filter(|&r| r != rank).collect(),
                });
            }
            backoff.pause(deadline);
        }
        tracing::debug!(rank, world, cuda = ordinal, "NCCL communicator ready");
        Ok(Self {
            rank,
            world,
            timeout,
            ordinal,
            stream,
            state: Mutex::new(CommState::Live(comm)),
            abort_requested: abort,
        })
    }

    /// For ranks in separate processes: rank 0 creates the id and serves it on `endpoint`
    /// (an address every rank can reach), the others fetch it from there; then every rank
    /// joins as in [`NcclGroup::new`]. The exchange and the join each wait at most `timeout`.
    pub fn connect_tcp(
        device: &Device,
        rank: usize,
        world: usize,
        endpoint: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<Self> {
        let bytes = exchange_unique_id(rank, world, endpoint, timeout, || {
            Ok(*NcclUniqueId::new()?.as_bytes())
        })?;
        Self::new(
            device,
            rank,
            world,
            &NcclUniqueId::from_bytes(bytes),
            timeout,
        )
    }

    /// The CUDA device index this rank runs on.
    pub fn cuda_ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether the communicator was aborted (after a failure or [`NcclGroup::abort`]).
    pub fn is_aborted(&self) -> bool {
        matches!(&*self.lock(), CommState::Aborted(_))
    }

    /// Aborts the communicator so that this rank's pending and later calls fail at once, and
    /// raises the group's [`AbortFlag`]: peers sharing it fail at their next poll, others at
    /// their timeout. A call waiting on another thread notices within its poll interval.
    pub fn abort(&self) {
        self.abort_requested.raise();
        if let Ok(mut state) = self.state.try_lock()
            && matches!(&*state, CommState::Live(_))
        {
            *state = CommState::Aborted("a rank aborted the group".into());
        }
    }

    fn lock(&self) -> MutexGuard<'_, CommState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the live communicator and a deadline; on failure aborts the communicator
    /// and turns the failure into the crate error for `op`.
    fn run<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&raw::Comm, Instant) -> std::result::Result<R, Failure>,
    ) -> Result<R> {
        let mut state = self.lock();
        if self.abort_requested.is_raised()
            && let CommState::Live(_) = &*state
        {
            *state = CommState::Aborted("a rank aborted the group".into());
        }
        let comm = match &*state {
            CommState::Live(c) => c,
            CommState::Aborted(why) => {
                return Err(Error::CollectiveMismatch {
                    rank: self.rank,
                    detail: format!("{op}: the NCCL communicator was aborted earlier ({why})"),
                });
            }
        };
        let started = Instant::now();
        let deadline = started + self.timeout;
        let outcome = self
            .stream
            .context()
            .bind_to_thread()
            .map_err(|e| Failure::Local(format!("binding the CUDA context: {e}")))
            .and_then(|()| f(comm, deadline));
        let failure = match outcome {
            Ok(r) => return Ok(r),
            Err(f) => f,
        };
        let (why, err) = match failure {
            Failure::Timeout => (
                format!("timed out after {} ms", self.timeout.as_millis()),
                Error::CollectiveTimeout {
                    op,
                    rank: self.rank,
                    timeout_ms: self.timeout.as_millis(),
                    missing: (0..self.world).filter(|&r| r != self.rank).collect(),
                },
            ),
            Failure::Remote(reason) => (
                reason.clone(),
                Error::CollectiveMismatch {
                    rank: self.rank,
                    detail: format!("{op}: a peer failed: {reason}"),
                },
            ),
            Failure::Local(reason) => (reason.clone(), nccl_error(op, self.rank, &reason)),
            Failure::AbortRequested => (
                "aborted while waiting".into(),
                Error::CollectiveMismatch {
                    rank: self.rank,
                    detail: format!("{op}: a rank aborted the group while the call waited"),
                },
            ),
        };
        tracing::error!(
            op,
            rank = self.rank,
            cuda = self.ordinal,
            waited_ms = started.elapsed().as_millis() as u64,
            "{why}; aborting the NCCL communicator"
        );
        // Dropping the communicator calls ncclCommAbort, which also ends its kernels.
        *state = CommState::Aborted(format!("{op} on rank {}: {why}", self.rank));
        Err(err)
    }

    /// Waits until the communicator has taken the last call (non-blocking calls may return
    /// `ncclInProgress` while NCCL is still enqueueing).
    fn wait_enqueued(
        &self,
        comm: &raw::Comm,
        deadline: Instant,
    ) -> std::result::Result<(), Failure> {
        let mut backoff = Backoff(0);
        loop {
            match comm.async_state() {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) => return Err(e),
            }
            self.check_wait(deadline)?;
            backoff.pause(deadline);
        }
    }

    fn check_wait(&self, deadline: Instant) -> std::result::Result<(), Failure> {
        if self.abort_requested.is_raised() {
            return Err(Failure::AbortRequested);
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout);
        }
        Ok(())
    }

    /// Records an event after the enqueued operation and waits for it, watching for NCCL
    /// errors, an abort and the deadline.
    fn wait_complete(
        &self,
        comm: &raw::Comm,
        deadline: Instant,
    ) -> std::result::Result<(), Failure> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| Failure::Local(format!("recording a CUDA event: {e}")))?;
        let mut backoff = Backoff(0);
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(Failure::Local(format!("waiting for the operation: {e}"))),
            }
            comm.async_state()?;
            self.check_wait(deadline)?;
            backoff.pause(deadline);
        }
    }

    /// Enqueues `call` (an NCCL operation on `self.stream`) and waits for it to complete.
    fn issue(
        &self,
        comm: &raw::Comm,
        deadline: Instant,
        call: impl FnOnce(&raw::Comm) -> std::result::Result<bool, Failure>,
    ) -> std::result::Result<(), Failure> {
        if call(comm)? {
            self.wait_enqueued(comm, deadline)?;
        }
        self.wait_complete(comm, deadline)
    }

    /// Copies `buf` to the device, runs `kind` on it in place and copies the result back.
    fn host_op<T: Elem>(&self, op: &'static str, kind: Kind, buf: &mut [T]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.run(op, |comm, deadline| {
            let cuda =
                |what: &str, e: &dyn std::fmt::Display| Failure::Local(format!("{what}: {e}"));
            let mut dev = self
                .stream
                .clone_htod(&*buf)
                .map_err(|e| cuda("copying to the device", &e))?;
            {
                let len = dev.len();
                let (ptr, _record) = dev.device_ptr_mut(&self.stream);
                self.issue(comm, deadline, |c| {
                    c.launch(kind, ptr, len, T::NCCL, &self.stream)
                })?;
            }
            self.stream
                .memcpy_dtoh(&dev, buf)
                .map_err(|e| cuda("copying to the host", &e))?;
            self.stream
                .synchronize()
                .map_err(|e| cuda("synchronising the NCCL stream", &e))
        })
    }

    /// Runs `kind` across ranks in place on `view`, on the device.
    fn device_op(
        &self,
        op: &'static str,
        kind: Kind,
        view: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        if view.is_empty() {
            return Ok(());
        }
        self.run(op, |comm, deadline| {
            // Kernels that produced the tensor run first.
            self.stream
                .join(view.stream())
                .map_err(|e| Failure::Local(format!("ordering after the tensor's stream: {e}")))?;
            let len = view.len();
            let (ptr, _record) = view.device_ptr_mut(&self.stream);
            self.issue(comm, deadline, |c| {
                c.launch(
                    kind,
                    ptr,
                    len,
                    sys::ncclDataType_t::ncclFloat32,
                    &self.stream,
                )
            })
        })
    }
}

/// Element types the host-buffer calls reduce.
trait Elem: DeviceRepr + ValidAsZeroBits + Copy {
    const NCCL: sys::ncclDataType_t;
}

impl Elem for f32 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
}

impl Elem for f64 {
    const NCCL: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat64;
}

/// An in-place NCCL operation on a buffer of `count` elements.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Sum,
    Broadcast {
        root: usize,
    },
    /// Sum, then rank `r` keeps chunk `r` (of `count / world` elements) in place: NCCL's
    /// in-place form, whose receive buffer is the send buffer plus `r × chunk` elements.
    ReduceScatter {
        rank: usize,
        world: usize,
    },
    /// Rank `r`'s chunk, already at offset `r × chunk`, is copied to every rank (in place:
    /// the send buffer is the receive buffer plus `r × chunk` elements).
    AllGather {
        rank: usize,
        world: usize,
    },
}

/// Runs a [`Kind`] on a contiguous f32 CUDA tensor across ranks in its own storage.
struct InPlace<'a> {
    group: &'a NcclGroup,
    op: &'static str,
    kind: Kind,
    /// The crate error behind a failed `cuda_fwd` (candle's error type would lose it).
    failure: std::cell::RefCell<Option<Error>>,
}

impl<'a> InPlace<'a> {
    fn new(group: &'a NcclGroup, op: &'static str, kind: Kind) -> Self {
        Self {
            group,
            op,
            kind,
            failure: std::cell::RefCell::new(None),
        }
    }

    /// Runs on `t` (contiguous f32 on the group's device); the error is the crate's.
    fn apply(self, t: &Tensor) -> Result<()> {
        match t.inplace_op1(&self) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failure.into_inner().unwrap_or(Error::Candle(e))),
        }
    }
}

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("{} needs a CUDA tensor, found a CPU one", self.op)
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} needs a contiguous tensor", self.op);
        };
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let mut view = slice.slice_mut(start..end);
        self.group
            .device_op(self.op, self.kind, &mut view)
            .map_err(|e| {
                let text = e.to_string();
                *self.failure.borrow_mut() = Some(e);
                candle_core::Error::Msg(text)
            })
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.host_op(OP_SUM, Kind::Sum, buf)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host_op(OP_SUM_F64, Kind::Sum, buf)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::BadRank {
                rank: root,
                world: self.world,
            });
        }
        self.host_op(OP_BROADCAST, Kind::Broadcast { root }, buf)
    }

    /// Reduces in place on the GPU. A contiguous f32 tensor on this rank's device is summed in
    /// its own storage (the returned tensor shares it); other dtypes or layouts are first
    /// converted to a contiguous f32 copy on the device. A CPU tensor goes through the host.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !matches!(t.device(), Device::Cuda(_)) {
            return super::reduce_tensor_through_host(self, t);
        }
        let t = self.on_this_device(OP_SUM_TENSOR, t)?;
        InPlace::new(self, OP_SUM_TENSOR, Kind::Sum).apply(&t)?;
        Ok(t)
    }

    /// Reduce-scatter in place on the GPU (CPU tensors go through the host).
    fn reduce_scatter_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !matches!(t.device(), Device::Cuda(_)) {
            let chunk = super::equal_chunk(self.world, t.elem_count(), OP_REDUCE_SCATTER)?;
            let sum = super::reduce_tensor_through_host(self, &t.flatten_all()?)?;
            return Ok(sum.narrow(0, self.rank * chunk, chunk)?.contiguous()?);
        }
        let chunk = super::equal_chunk(self.world, t.elem_count(), OP_REDUCE_SCATTER)?;
        let t = self.on_this_device(OP_REDUCE_SCATTER, &t.flatten_all()?)?;
        let kind = Kind::ReduceScatter {
            rank: self.rank,
            world: self.world,
        };
        InPlace::new(self, OP_REDUCE_SCATTER, kind).apply(&t)?;
        Ok(t.narrow(0, self.rank * chunk, chunk)?.contiguous()?)
    }

    /// All-gather in place on the GPU (CPU tensors go through the host).
    fn all_gather_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.flatten_all()?.to_dtype(DType::F32)?;
        let n = t.elem_count();
        let zeros = |k: usize| Tensor::zeros(k * n, DType::F32, t.device());
        // A fresh buffer with this rank's chunk in its place.
        let placed = Tensor::cat(
            &[&zeros(self.rank)?, &t, &zeros(self.world - self.rank - 1)?],
            0,
        )?;
        if !matches!(t.device(), Device::Cuda(_)) {
            return super::reduce_tensor_through_host(self, &placed);
        }
        let placed = self.on_this_device(OP_ALL_GATHER, &placed)?;
        let kind = Kind::AllGather {
            rank: self.rank,
            world: self.world,
        };
        InPlace::new(self, OP_ALL_GATHER, kind).apply(&placed)?;
        Ok(placed)
    }
}

impl NcclGroup {
    /// `t` as a contiguous f32 tensor on this rank's device (an error names the device it is
    /// on when that is another GPU).
    fn on_this_device(&self, op: &str, t: &Tensor) -> Result<Tensor> {
        if let candle_core::DeviceLocation::Cuda { gpu_id } = t.device().location()
            && gpu_id != self.ordinal
        {
            return Err(Error::Data {
                context: format!("{op} on rank {}", self.rank),
                reason: format!(
                    "the tensor is on cuda:{gpu_id} but this rank's group runs on cuda:{}",
                    self.ordinal
                ),
            });
        }
        Ok(t.to_dtype(DType::F32)?.contiguous()?)
    }
}

/// The few raw NCCL calls this module makes. Everything `unsafe` in the crate's NCCL support
/// is here; each call states what it relies on.
#[allow(unsafe_code)]
mod raw {
    use std::ffi::CStr;
    use std::os::raw::{c_char, c_void};

    use candle_core::cuda_backend::cudarc::driver::CudaStream;
    use candle_core::cuda_backend::cudarc::nccl::result::{self, NcclStatus};
    use candle_core::cuda_backend::cudarc::nccl::sys;

    use super::{Failure, Kind, UNIQUE_ID_BYTES, UniqueIdBytes};

    /// `NCCL_CONFIG_UNDEF_INT`: "use NCCL's default" for an integer field of `ncclConfig_t`.
    const UNDEF_INT: i32 = i32::MIN;

    fn describe(code: sys::ncclResult_t) -> String {
        // SAFETY: ncclGetErrorString returns a pointer to a static, NUL-terminated string
        // for every result code.
        let text = unsafe { sys::ncclGetErrorString(code) };
        if text.is_null() {
            return format!("{code:?}");
        }
        // SAFETY: non-null and NUL-terminated (above); the string is static.
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        format!("{code:?} ({text})")
    }

    /// A fresh unique id.
    pub(super) fn unique_id() -> Result<UniqueIdBytes, String> {
        let id = result::get_uniqueid().map_err(|e| describe(e.0))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// An owned communicator; dropping it aborts it (`ncclCommAbort`).
    pub(super) struct Comm(sys::ncclComm_t);

    // SAFETY: an NCCL communicator is not tied to the thread that created it; NCCL requires
    // only that calls on one communicator are not made concurrently, which `NcclGroup`
    // guarantees by keeping it behind a mutex.
    unsafe impl Send for Comm {}

    impl Comm {
        /// Starts creating a non-blocking communicator (rank `rank` of `world`); poll
        /// [`Comm::async_state`] until it is ready.
        pub(super) fn init(rank: usize, world: usize, id: &UniqueIdBytes) -> Result<Comm, String> {
            let version = result::get_nccl_version().map_err(|e| describe(e.0))?;
            let mut config = sys::ncclConfig_t {
                size: std::mem::size_of::<sys::ncclConfig_t>(),
                magic: 0xcafe_beef,
                version: version as u32,
                blocking: 0,
                cgaClusterSize: UNDEF_INT,
                minCTAs: UNDEF_INT,
                maxCTAs: UNDEF_INT,
                netName: std::ptr::null(),
                splitShare: UNDEF_INT,
                trafficClass: UNDEF_INT,
                commName: std::ptr::null(),
                collnetEnable: UNDEF_INT,
                CTAPolicy: UNDEF_INT,
                shrinkShare: UNDEF_INT,
                nvlsCTAs: UNDEF_INT,
                nChannelsPerNetPeer: UNDEF_INT,
                nvlinkCentricSched: UNDEF_INT,
                graphUsageMode: UNDEF_INT,
                numRmaCtx: UNDEF_INT,
                maxP2pPeers: UNDEF_INT,
            };
            let internal: [c_char; UNIQUE_ID_BYTES] = id.map(|b| b as c_char);
            let uid = sys::ncclUniqueId { internal };
            let mut comm: sys::ncclComm_t = std::ptr::null_mut();
            let (nranks, rank) = (
                i32::try_from(world).map_err(|_| format!("world size {world} too large"))?,
                i32::try_from(rank).map_err(|_| format!("rank {rank} too large"))?,
            );
            // SAFETY: `comm` and `config` are valid for writes and reads for the duration of
            // the call; the config was initialised field by field as NCCL_CONFIG_INITIALIZER
            // does (size, magic, version, undefined values), and NCCL reads at most `size`
            // bytes of it.
            let r =
                unsafe { result::comm_init_rank_config(&mut comm, nranks, uid, rank, &mut config) };
            match r {
                Ok(_) => Ok(Comm(comm)),
                Err(e) => {
                    if !comm.is_null() {
                        // SAFETY: NCCL returned a communicator handle that we own.
                        let _ = unsafe { result::comm_abort(comm) };
                    }
                    Err(describe(e.0))
                }
            }
        }

        /// `Ok(true)` while NCCL is still working on the last call (`ncclInProgress`),
        /// `Ok(false)` when it is done, the failure otherwise.
        pub(super) fn async_state(&self) -> Result<bool, Failure> {
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: `self.0` is a live communicator and `state` is valid for writes.
            let r = unsafe { sys::ncclCommGetAsyncError(self.0, &mut state) };
            if r != sys::ncclResult_t::ncclSuccess {
                return Err(Failure::Local(format!(
                    "ncclCommGetAsyncError: {}",
                    describe(r)
                )));
            }
            match state {
                sys::ncclResult_t::ncclSuccess => Ok(false),
                sys::ncclResult_t::ncclInProgress => Ok(true),
                other => Err(self.failure(other)),
            }
        }

        fn failure(&self, code: sys::ncclResult_t) -> Failure {
            // SAFETY: `self.0` is a live communicator; the returned string is owned by NCCL
            // and stays valid until the next NCCL call on this thread, we copy it at once.
            let last = unsafe { sys::ncclGetLastError(self.0) };
            let detail = if last.is_null() {
                String::new()
            } else {
                // SAFETY: non-null, NUL-terminated (NCCL's contract for ncclGetLastError).
                let text = unsafe { CStr::from_ptr(last) }.to_string_lossy();
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            };
            let reason = format!("{}{detail}", describe(code));
            if code == sys::ncclResult_t::ncclRemoteError {
                Failure::Remote(reason)
            } else {
                Failure::Local(reason)
            }
        }

        /// Enqueues `kind` in place on `count` elements at device address `ptr` on `stream`.
        /// `Ok(true)` when NCCL is still enqueueing (poll [`Comm::async_state`]).
        pub(super) fn launch(
            &self,
            kind: Kind,
            ptr: u64,
            count: usize,
            dtype: sys::ncclDataType_t,
            stream: &CudaStream,
        ) -> Result<bool, Failure> {
            let buf = ptr as *mut c_void;
            let s = stream.cu_stream() as sys::cudaStream_t;
            // SAFETY: `ptr` is the address of `count` elements of `dtype` on this
            // communicator's device, kept alive and exclusively borrowed by the caller until
            // the operation has completed or the communicator has been aborted; `s` is a live
            // stream of that device.
            let r = unsafe {
                match kind {
                    Kind::Sum => result::all_reduce(
                        buf,
                        buf,
                        count,
                        dtype,
                        sys::ncclRedOp_t::ncclSum,
                        self.0,
                        s,
                    ),
                    Kind::Broadcast { root } => {
                        result::broadcast(buf, buf, count, dtype, root as i32, self.0, s)
                    }
                    Kind::ReduceScatter { rank, world } => {
                        let chunk = count / world;
                        let own = (ptr + (rank * chunk * dtype_bytes(dtype)) as u64) as *mut c_void;
                        result::reduce_scatter(
                            buf,
                            own,
                            chunk,
                            dtype,
                            sys::ncclRedOp_t::ncclSum,
                            self.0,
                            s,
                        )
                    }
                    Kind::AllGather { rank, world } => {
                        let chunk = count / world;
                        let own =
                            (ptr + (rank * chunk * dtype_bytes(dtype)) as u64) as *const c_void;
                        result::all_gather(own, buf, chunk, dtype, self.0, s)
                    }
                }
            };
            match r {
                Ok(NcclStatus::InProgress) => Ok(true),
                Ok(_) => Ok(false),
                Err(e) => Err(self.failure(e.0)),
            }
        }
    }

    /// Bytes per element of the data types this module sends.
    fn dtype_bytes(dtype: sys::ncclDataType_t) -> usize {
        match dtype {
            sys::ncclDataType_t::ncclFloat64 => 8,
            _ => 4,
        }
    }

    impl Drop for Comm {
        fn drop(&mut self) {
            // SAFETY: we own the communicator and nothing uses it after this; abort (rather
            // than finalize) never waits for peers, so dropping a group cannot hang.
            let _ = unsafe { result::comm_abort(self.0) };
        }
    }
}
