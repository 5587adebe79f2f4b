//! [`ReplayBody`]: a request body that can be sent a second time.
//!
//! The first attempt streams the caller's body and keeps a `Bytes` clone of each chunk (a
//! reference count, never a copy of the data) until the replay cap is reached. A re-send
//! takes the recording over: it yields the kept chunks, then reads on from the caller's body
//! where the first attempt stopped, then the trailers.
//!
//! Exactly one attempt owns the recording at a time. The owner keeps it in its own field, so
//! polling takes no lock; the shared slot is touched only when an attempt ends (its body is
//! dropped and hands the recording back) and when a re-send asks for it. A re-send that finds
//! the slot empty means the first attempt's body is still alive, typically because the server
//! answered before reading all of it: that is a refusal ([`NotResent::BodyInUse`]), not a panic.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::error::NotResent;

/// The replay cap used when none is configured: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// A request body as the inner service sees it: the caller's body passed through as it is,
/// an empty body, or a body recorded for replay.
///
/// The layer creates these; you only name the type, e.g. `Client<_, ReplayBody<Full<Bytes>>>`.
/// To use one by hand:
///
/// ```
/// use bytes::Bytes;
/// use http_body::Body;
/// use http_body_util::{BodyExt, Full};
/// use tower_failover::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"hello")), 1024);
/// let sent = first.collect().await.unwrap().to_bytes();
///
/// let second = handle.replay().expect("the first attempt has ended and the body fitted");
/// assert_eq!(second.size_hint().exact(), Some(5));
/// assert_eq!(second.collect().await.unwrap().to_bytes(), sent);
/// # }
/// ```
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    // Not wrapped: no re-send is possible, so nothing is kept.
    Plain(B),
    // A re-send of a request whose body was empty: nothing to keep either.
    Empty,
    Recorded(Attempt<B>),
    // A body that was whole in memory (see `take_whole`): its one chunk, until yielded. The
    // re-send template keeps a clone of the same `Bytes`, so no recording is needed.
    Whole(Option<Bytes>),
}

/// One attempt's hold on the shared recording.
struct Attempt<B> {
    slot: Arc<Slot<B>>,
    // `Some` from creation until drop, when it goes back into the slot.
    // Boxed: inline, the recording (about 140 bytes) would set the size of every
    // `ReplayBody`, plain ones included, and so of every request the inner service gets and
    // of the future that holds it. The box moves between the slot and the attempts as is.
    recording: Option<Box<Recording<B>>>,
}

struct Slot<B> {
    recording: Mutex<Option<Box<Recording<B>>>>,
}

struct Recording<B> {
    // What is left of the caller's body.
    rest: B,
    // Clones of every chunk read so far, while their total stays within `cap`.
    chunks: Chunks,
    recorded_len: usize,
    cap: usize,
    // More than `cap` bytes were read: nothing is kept from here on. Only bytes read count, so a
    // large body that was refused at connect, or cut off early, can still be re-sent: its
    // unread rest is still in `rest`.
    over_cap: bool,
    // The caller's body has ended: `rest` yields nothing more.
    finished: bool,
    failed: bool,
    // Boxed: request trailers are rare, and inline a `HeaderMap` would add about 90 bytes to
    // every request the inner service gets, which the futures move by value.
    trailers: Option<Box<HeaderMap>>,
    // Per attempt: how many of `chunks` (and bytes) this attempt has yielded, and whether it
    // has yielded the trailers.
    cursor: usize,
    yielded_len: usize,
    trailers_yielded: bool,
}

impl<B> Recording<B> {
    /// The caller's body gave trailers that this attempt has not yielded yet.
    fn trailers_to_come(&self) -> bool {
        self.trailers.is_some() && !self.trailers_yielded
    }

    fn rewind(&mut self) {
        self.cursor = 0;
        self.yielded_len = 0;
        self.trailers_yielded = false;
    }

    fn record(&mut self, chunk: &Bytes) {
        // An empty chunk carries nothing to replay, and the cap (which counts bytes) would
        // not bound how many of them were kept.
        if self.over_cap || chunk.is_empty() {
            return;
        }
        if self.recorded_len + chunk.len() > self.cap {
            // From here a re-send is impossible; free what was kept at once.
            self.over_cap = true;
            self.chunks = Chunks::default();
            self.recorded_len = 0;
            self.cursor = 0;
            self.yielded_len = 0;
            return;
        }
        self.recorded_len += chunk.len();
        self.yielded_len += chunk.len();
        self.chunks.push(chunk.clone());
        // This attempt yields the chunk itself, so it must not replay it later.
        self.cursor = self.chunks.len();
    }
}

/// The chunks a recording keeps. Most bodies worth re-sending arrive as one chunk (a `Full`,
/// a serialized payload), so the first is held inline: keeping it allocates nothing.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.more.push(chunk);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    /// The chunk at `index`, which is below `len()`.
    fn get(&self, index: usize) -> &Bytes {
        match index {
            0 => self.first.as_ref().expect("index below len"),
            i => &self.more[i - 1],
        }
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            *self.slot.recording.lock().unwrap_or_else(PoisonError::into_inner) = Some(recording);
        }
    }
}

/// The right to re-send a recorded body, kept by the layer while the first attempt runs.
///
/// Made by [`ReplayBody::recorded`]. Exactly one body holds the recording at a time: a replay
/// is possible only once the attempt before it has ended (its body dropped).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_failover::{NotResent, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"{\"name\":\"Contoso\"}")), 1024);
/// // The first attempt is still running: its body cannot be in two places.
/// assert_eq!(handle.check(), Err(NotResent::BodyInUse));
///
/// drop(first); // the connection was refused before anything was read
/// let second = handle.replay().unwrap();
/// assert_eq!(second.collect().await.unwrap().to_bytes(), "{\"name\":\"Contoso\"}");
/// // And again, once the second attempt has ended.
/// assert!(handle.replay().is_ok());
/// # }
/// ```
pub struct ReplayHandle<B> {
    slot: Arc<Slot<B>>,
}

impl<B> ReplayHandle<B> {
    /// A body that yields what the last attempt sent, then the rest of the caller's body.
    ///
    /// Refused when the last attempt still holds the body ([`NotResent::BodyInUse`]), when the
    /// body grew past the cap ([`NotResent::BodyOverCap`]), or when reading it failed
    /// ([`NotResent::BodyFailed`]).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_failover::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (mut first, handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"hello")), 1024);
    /// // The first attempt sends the body, then the connection is lost.
    /// let sent = first.frame().await.unwrap().unwrap().into_data().unwrap();
    /// drop(first);
    ///
    /// let second = handle.replay().unwrap();
    /// assert_eq!(second.size_hint().exact(), Some(5));
    /// assert_eq!(second.collect().await.unwrap().to_bytes(), sent);
    /// # }
    /// ```
    pub fn replay(&self) -> Result<ReplayBody<B>, NotResent> {
        let mut slot = self.slot.recording.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(recording) = slot.as_ref() else {
            return Err(NotResent::BodyInUse);
        };
        if recording.over_cap {
            return Err(NotResent::BodyOverCap { cap: recording.cap });
        }
        if recording.failed {
            return Err(NotResent::BodyFailed);
        }
        let mut recording = slot.take().expect("checked above");
        recording.rewind();
        Ok(ReplayBody {
            kind: Kind::Recorded(Attempt {
                slot: self.slot.clone(),
                recording: Some(recording),
            }),
        })
    }

    /// Why a replay would be refused now, without taking the body.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_failover::{NotResent, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from(vec![0u8; 4096])), 1024);
    /// first.collect().await.unwrap(); // the whole body was sent: more than the cap
    /// assert_eq!(handle.check(), Err(NotResent::BodyOverCap { cap: 1024 }));
    /// # }
    /// ```
    pub fn check(&self) -> Result<(), NotResent> {
        let slot = self.slot.recording.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            None => Err(NotResent::BodyInUse),
            Some(r) if r.over_cap => Err(NotResent::BodyOverCap { cap: r.cap }),
            Some(r) if r.failed => Err(NotResent::BodyFailed),
            Some(_) => Ok(()),
        }
    }
}

impl<B> fmt::Debug for ReplayHandle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayHandle").finish_non_exhaustive()
    }
}

impl<B> ReplayBody<B> {
    /// The caller's body, passed through with nothing kept.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_failover::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body = ReplayBody::plain(Full::new(Bytes::from_static(b"hello")));
    /// assert!(!body.is_recorded());
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    /// # }
    /// ```
    pub fn plain(body: B) -> Self {
        ReplayBody {
            kind: Kind::Plain(body),
        }
    }

    /// An empty body.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::Full;
    /// use tower_failover::ReplayBody;
    ///
    /// // What a failback probe sends.
    /// let body = ReplayBody::<Full<Bytes>>::empty();
    /// assert!(body.is_end_stream());
    /// assert_eq!(body.size_hint().exact(), Some(0));
    /// ```
    pub fn empty() -> Self {
        ReplayBody { kind: Kind::Empty }
    }

    /// True when this body keeps a recording for a replay.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower_failover::ReplayBody;
    ///
    /// let (recorded, _handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"hello")), 1024);
    /// assert!(recorded.is_recorded());
    /// assert!(!ReplayBody::plain(Full::new(Bytes::from_static(b"hello"))).is_recorded());
    /// ```
    pub fn is_recorded(&self) -> bool {
        matches!(self.kind, Kind::Recorded(_) | Kind::Whole(_))
    }

    /// A body of exactly these bytes, for a body kept whole (see [`take_whole`]).
    pub(crate) fn whole(bytes: Bytes) -> Self {
        ReplayBody {
            kind: Kind::Whole(Some(bytes)),
        }
    }
}

/// Takes a body that is already whole in memory out of `body`, without copying: a
/// `Full<Bytes>` (the body type hyper clients are usually given) of at most `cap` bytes.
/// A re-send then clones the `Bytes`, so the call needs no recording: no shared slot, no lock,
/// and a re-send works even while the first attempt still holds its body. `None` leaves
/// `body` untouched.
pub(crate) fn take_whole<B: Body + 'static>(body: &mut B, cap: usize) -> Option<Bytes> {
    let full = (body as &mut dyn std::any::Any).downcast_mut::<http_body_util::Full<Bytes>>()?;
    // The cap bounds what a call keeps; a larger body takes the recorded path, which keeps
    // nothing past the cap.
    if full.size_hint().exact()? > cap as u64 {
        return None;
    }
    // A `Full` answers at once, with its one data frame or with nothing; it never waits, so
    // a waker that does nothing is enough.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        Poll::Ready(None) => Some(Bytes::new()),
        Poll::Ready(Some(Err(never))) => match never {},
        Poll::Pending => None,
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for the first attempt, keeping up to `cap` bytes for a replay, and
    /// returns the handle that makes the replay. A replay is possible while the attempts
    /// have read at most `cap` bytes, whatever the body's total size.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_failover::{NotResent, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // A 4 KiB body with a 1 KiB cap: refused at connect, it can still be re-sent whole.
    /// let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from(vec![7u8; 4096])), 1024);
    /// drop(first);
    /// let second = handle.replay().unwrap();
    /// // This attempt reads all of it, so nothing is kept past the cap.
    /// assert_eq!(second.collect().await.unwrap().to_bytes().len(), 4096);
    /// assert_eq!(handle.replay().unwrap_err(), NotResent::BodyOverCap { cap: 1024 });
    /// # }
    /// ```
    pub fn recorded(body: B, cap: usize) -> (Self, ReplayHandle<B>) {
        let slot = Arc::new(Slot {
            recording: Mutex::new(None),
        });
        let recording = Recording {
            rest: body,
            chunks: Chunks::default(),
            recorded_len: 0,
            cap,
            over_cap: false,
            finished: false,
            failed: false,
            trailers: None,
            cursor: 0,
            yielded_len: 0,
            trailers_yielded: false,
        };
        let handle = ReplayHandle { slot: slot.clone() };
        let body = ReplayBody {
            kind: Kind::Recorded(Attempt {
                slot,
                recording: Some(Box::new(recording)),
            }),
        };
        (body, handle)
    }
}

impl<B> Default for ReplayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Plain(_) => "plain",
            Kind::Empty => "empty",
            Kind::Recorded(_) => "recorded",
            Kind::Whole(_) => "whole",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Plain(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map(|frame| frame.map_data(into_bytes)))),
            Kind::Empty => Poll::Ready(None),
            Kind::Recorded(attempt) => {
                let recording = attempt
                    .recording
                    .as_mut()
                    .expect("an attempt owns its recording until it is dropped");
                poll_recorded(recording, cx)
            }
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain(body) => body.is_end_stream(),
            Kind::Empty => true,
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Recorded(attempt) => match &attempt.recording {
                Some(r) => {
                    r.cursor >= r.chunks.len()
                        && if r.finished {
                            !r.trailers_to_come()
                        } else {
                            r.rest.is_end_stream()
                        }
                }
                None => true,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain(body) => body.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Recorded(attempt) => match &attempt.recording {
                Some(r) => {
                    let kept = (r.recorded_len - r.yielded_len.min(r.recorded_len)) as u64;
                    // With trailers still to come, the length is what the caller's body says
                    // (an exact one only if it says so): an HTTP/1 client sends a body of
                    // exact length with `Content-Length`, and then drops its trailers.
                    if r.finished && !r.trailers_to_come() {
                        SizeHint::with_exact(kept)
                    } else {
                        let rest = r.rest.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(kept.saturating_add(rest.lower()));
                        if let Some(upper) = rest.upper() {
                            hint.set_upper(kept.saturating_add(upper));
                        }
                        hint
                    }
                }
                None => SizeHint::with_exact(0),
            },
        }
    }
}

pub(crate) fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    // Zero-copy when `D` is `Bytes` (its `copy_to_bytes` is a split); other buffers are
    // copied once, as they must be to be kept.
    data.copy_to_bytes(data.remaining())
}

fn poll_recorded<B>(
    r: &mut Recording<B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body + Unpin,
{
    // First what an earlier attempt already read.
    if r.cursor < r.chunks.len() {
        let chunk = r.chunks.get(r.cursor).clone();
        r.cursor += 1;
        r.yielded_len += chunk.len();
        return Poll::Ready(Some(Ok(Frame::data(chunk))));
    }
    if r.finished {
        if !r.trailers_yielded {
            r.trailers_yielded = true;
            if let Some(trailers) = &r.trailers {
                return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::clone(trailers)))));
            }
        }
        return Poll::Ready(None);
    }
    // Then read on from the caller's body, recording as we go.
    match Pin::new(&mut r.rest).poll_frame(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(None) => {
            r.finished = true;
            r.trailers_yielded = true;
            Poll::Ready(None)
        }
        Poll::Ready(Some(Err(error))) => {
            r.failed = true;
            Poll::Ready(Some(Err(error)))
        }
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => {
                let chunk = into_bytes(data);
                r.record(&chunk);
                if r.over_cap {
                    r.yielded_len = 0;
                }
                if r.rest.is_end_stream() {
                    r.finished = true;
                    r.trailers_yielded = true;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    r.trailers = Some(Box::new(trailers.clone()));
                    r.finished = true;
                    r.trailers_yielded = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                // A frame kind this crate does not know: pass it on without keeping it.
                Err(frame) => Poll::Ready(Some(Ok(frame.map_data(into_bytes)))),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[test]
    fn only_a_full_body_within_the_cap_is_taken_whole() {
        let mut full = Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(take_whole(&mut full, 10), Some(Bytes::from_static(b"0123456789")));
        assert!(full.is_end_stream());

        // Over the cap: left as it was, for the recorded path.
        let mut big = Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(take_whole(&mut big, 9), None);
        assert_eq!(big.size_hint().exact(), Some(10));

        // Any other body type: left as it was.
        let mut text = String::from("hello");
        assert_eq!(take_whole(&mut text, 1024), None);
        assert_eq!(text, "hello");

        let whole = ReplayBody::<Full<Bytes>>::whole(Bytes::from_static(b"abc"));
        assert!(whole.is_recorded());
        assert_eq!(whole.size_hint().exact(), Some(3));
        let collected = block_on(whole.collect()).unwrap().to_bytes();
        assert_eq!(collected, Bytes::from_static(b"abc"));
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn replays_what_was_sent_and_the_unread_rest() {
        block_on(async {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Ok(Frame::data(Bytes::from_static(b"cd"))),
                Ok(Frame::data(Bytes::from_static(b"ef"))),
            ];
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            let (mut first, handle) = ReplayBody::recorded(body, 1024);
            // The first attempt reads only one chunk, then is dropped (connection lost).
            let frame = first.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ab");
            drop(first);
            let second = handle.replay().unwrap();
            assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
            // And again, from a third attempt.
            let third = handle.replay().unwrap();
            assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
        });
    }

    #[test]
    fn a_replay_from_an_empty_recording_does_not_repeat_the_first_chunk() {
        block_on(async {
            let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"xyz")), 1024);
            drop(first); // never polled: refused at connect
            let second = handle.replay().unwrap();
            assert_eq!(second.collect().await.unwrap().to_bytes(), "xyz");
        });
    }

    /// Zero-length chunks carry no bytes, so the cap never counts them: a body that yields
    /// many of them (a stream of keep-alive ticks, say) must not make the recording grow
    /// with each one, past what the cap allows.
    #[test]
    fn empty_chunks_are_not_kept() {
        block_on(async {
            let frames = (0..200_000)
                .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::new())))
                .chain([Ok(Frame::data(Bytes::from_static(b"xy")))]);
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let (first, handle) = ReplayBody::recorded(body, 16);
            assert_eq!(first.collect().await.unwrap().to_bytes(), "xy");
            {
                let slot = handle.slot.recording.lock().unwrap();
                let kept = slot.as_ref().expect("the first attempt has ended").chunks.len();
                assert!(kept <= 1, "{kept} chunks kept for 2 bytes under a 16-byte cap");
            }
            let second = handle.replay().unwrap();
            assert_eq!(second.size_hint().exact(), Some(2));
            assert_eq!(second.collect().await.unwrap().to_bytes(), "xy");
        });
    }

    #[test]
    fn a_replay_with_trailers_to_come_is_of_the_length_its_body_said() {
        block_on(async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Ok(Frame::trailers(trailers.clone())),
            ];
            // Of unknown length, as a stream is: the first attempt goes out chunked.
            let (first, handle) =
                ReplayBody::recorded(StreamBody::new(futures_util::stream::iter(frames)), 1024);
            assert_eq!(first.size_hint().exact(), None);
            let collected = first.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            let mut second = handle.replay().unwrap();
            assert_eq!(
                second.size_hint().exact(),
                None,
                "so must the replay, trailers and all"
            );
            assert_eq!(second.size_hint().lower(), 2);
            assert_eq!(second.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
            assert!(!second.is_end_stream());
            let last = second.frame().await.unwrap().unwrap();
            assert_eq!(last.into_trailers().unwrap(), trailers);
            assert!(second.is_end_stream());
            assert_eq!(second.size_hint().exact(), Some(0));
        });
    }

    #[test]
    fn refusals() {
        block_on(async {
            let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from_static(b"xyz")), 1024);
            assert_eq!(handle.replay().unwrap_err(), NotResent::BodyInUse);
            drop(first);

            let (first, handle) = ReplayBody::recorded(Full::new(Bytes::from(vec![0u8; 100])), 10);
            let all = first.collect().await.unwrap().to_bytes();
            assert_eq!(all.len(), 100, "the first attempt streams on past the cap");
            assert_eq!(handle.replay().unwrap_err(), NotResent::BodyOverCap { cap: 10 });
        });
    }
}
