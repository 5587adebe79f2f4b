//! Properties of `ReplayBody`: whatever the chunking, the cap, the trailers and how much of the
//! body the first attempt read before it was dropped, a replay yields exactly the original
//! body, or is refused as `BodyOverCap` exactly when the first attempt read more than the cap.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use proptest::sample::Index;
use tower_failover::{NotResent, ReplayBody};

/// A body of unknown length: a stream of ready frames.
type UnknownLength =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// One generated case.
#[derive(Debug, Clone)]
struct Case {
    /// The data chunks, in order (empty chunks included).
    chunks: Vec<Bytes>,
    /// Trailers after the data, if any.
    trailers: Option<HeaderMap>,
    /// The replay cap.
    cap: usize,
    /// How many frames the first attempt reads before it is dropped, `0..=frames`.
    read_first: usize,
}

impl Case {
    fn frames(&self) -> Vec<Frame<Bytes>> {
        let mut frames: Vec<Frame<Bytes>> = self.chunks.iter().cloned().map(Frame::data).collect();
        if let Some(trailers) = &self.trailers {
            frames.push(Frame::trailers(trailers.clone()));
        }
        frames
    }

    fn data(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn total(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// The original as a stream of unknown length (`size_hint` is `0..`, never end-of-stream
    /// before `None`).
    fn stream_body(&self) -> UnknownLength {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = self.frames().into_iter().map(Ok).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// The original as a body that knows its exact remaining length and when it has ended.
    fn exact_body(&self) -> ExactBody {
        ExactBody {
            frames: self.frames().into(),
            remaining: self.total() as u64,
        }
    }
}

/// A multi-frame body with an exact `size_hint` and a true `is_end_stream`, like a
/// `Full` cut into pieces.
struct ExactBody {
    frames: VecDeque<Frame<Bytes>>,
    remaining: u64,
}

impl Body for ExactBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.frames.pop_front();
        if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
            self.remaining -= data.len() as u64;
        }
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A chunk of `len` bytes whose content depends on `seed` and the position.
fn chunk(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8)
        .collect()
}

fn trailers(pairs: Vec<(String, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    map
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0usize..2000, any::<u8>()), 0..40),
        prop::option::of(prop::collection::vec(
            ("x-[a-z]{1,8}", "[a-zA-Z0-9 ]{0,16}"),
            1..4,
        )),
        0usize..50_000,
        any::<Index>(),
    )
        .prop_map(|(chunks, pairs, cap, read)| {
            let frames = chunks.len() + usize::from(pairs.is_some());
            Case {
                chunks: chunks.into_iter().map(|(len, seed)| chunk(len, seed)).collect(),
                trailers: pairs.map(trailers),
                cap,
                read_first: read.index(frames + 1),
            }
        })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Checks that `size_hint` admits `remaining` bytes, and pins it to exactly that when the
/// original's size was exact.
fn check_hint(hint: SizeHint, remaining: usize, exact: bool, when: &str) -> Result<(), TestCaseError> {
    let remaining = remaining as u64;
    if exact {
        prop_assert_eq!(hint.exact(), Some(remaining), "size_hint {} is not exact", when);
    } else {
        prop_assert!(
            hint.lower() <= remaining,
            "size_hint lower {} > {} {}",
            hint.lower(),
            remaining,
            when
        );
        prop_assert!(
            hint.upper().is_none_or(|upper| upper >= remaining),
            "size_hint upper {:?} < {} {}",
            hint.upper(),
            remaining,
            when
        );
    }
    Ok(())
}

/// Reads a whole replay, checking the hints on the way: the data, the trailers, and that it
/// says it has ended once it has.
async fn read_replay<B>(
    mut body: ReplayBody<B>,
    total: usize,
    exact: bool,
) -> Result<(Vec<u8>, Option<HeaderMap>), TestCaseError>
where
    B: Body<Data = Bytes, Error = Infallible> + Unpin,
{
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        check_hint(body.size_hint(), total - data.len(), exact, "on the replay")?;
        let said_ended = body.is_end_stream();
        let Some(frame) = body.frame().await else { break };
        let frame = frame.unwrap();
        // hyper stops polling a body that says it has ended: a frame after that would be lost.
        prop_assert!(!said_ended, "is_end_stream was true with a frame still to come");
        prop_assert!(trailers.is_none(), "a frame after the trailers");
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = Some(frame.into_trailers().expect("data or trailers only")),
        }
    }
    prop_assert!(
        body.is_end_stream(),
        "is_end_stream is false after the last frame"
    );
    prop_assert_eq!(body.size_hint().exact(), Some(0));
    Ok((data, trailers))
}

async fn check<B>(case: &Case, original: B, exact: bool) -> Result<(), TestCaseError>
where
    B: Body<Data = Bytes, Error = Infallible> + Unpin,
{
    let frames = case.frames();
    let k = case.read_first;
    let total = case.total();

    // The first attempt reads k frames, each the original's, then is dropped.
    let (mut first, handle) = ReplayBody::recorded(original, case.cap);
    prop_assert_eq!(handle.replay().err(), Some(NotResent::BodyInUse));
    check_hint(first.size_hint(), total, exact, "on the first attempt")?;
    let mut read = 0usize;
    for expected in &frames[..k] {
        prop_assert!(!first.is_end_stream(), "first attempt said it ended early");
        let frame = first.frame().await.expect("a frame is left").unwrap();
        match (frame.data_ref(), expected.data_ref()) {
            (Some(got), Some(want)) => {
                prop_assert_eq!(got, want);
                read += got.len();
            }
            (None, None) => prop_assert_eq!(frame.trailers_ref(), expected.trailers_ref()),
            _ => prop_assert!(false, "frame kinds differ"),
        }
        check_hint(first.size_hint(), total - read, exact, "on the first attempt")?;
    }
    drop(first);

    // The replay: refused exactly when the first attempt read more than the cap.
    let replay = handle.replay();
    if read > case.cap {
        prop_assert_eq!(replay.err(), Some(NotResent::BodyOverCap { cap: case.cap }));
        prop_assert_eq!(handle.check(), Err(NotResent::BodyOverCap { cap: case.cap }));
        return Ok(());
    }
    let replay = match replay {
        Ok(body) => body,
        Err(reason) => {
            return Err(TestCaseError::fail(format!(
                "replay refused: {reason:?} ({read} <= {})",
                case.cap
            )))
        }
    };
    prop_assert!(replay.is_recorded());
    prop_assert_eq!(handle.replay().err(), Some(NotResent::BodyInUse));
    let (data, trailers) = read_replay(replay, total, exact).await?;
    prop_assert_eq!(&data, &case.data());
    prop_assert_eq!(&trailers, &case.trailers);

    // A third attempt: the replay read the rest of the body, so now the whole body counts.
    match handle.replay() {
        Ok(again) => {
            prop_assert!(
                total <= case.cap,
                "replayed again although {} > cap {}",
                total,
                case.cap
            );
            let (data, trailers) = read_replay(again, total, exact).await?;
            prop_assert_eq!(&data, &case.data());
            prop_assert_eq!(&trailers, &case.trailers);
        }
        Err(reason) => {
            prop_assert!(total > case.cap, "third attempt refused: {:?}", reason);
            prop_assert_eq!(reason, NotResent::BodyOverCap { cap: case.cap });
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stream_of_unknown_length_replays_exactly_or_is_refused_over_cap(case in case()) {
        let body = case.stream_body();
        block_on(check(&case, body, false))?;
    }

    #[test]
    fn body_of_exact_length_replays_exactly_with_exact_size_hints(case in case()) {
        let body = case.exact_body();
        block_on(check(&case, body, true))?;
    }
}

#[test]
fn a_body_the_first_attempt_never_polled_replays_whole_even_far_over_the_cap() {
    block_on(async {
        let case = Case {
            chunks: (0..30).map(|i| chunk(1999, i)).collect(),
            trailers: Some(trailers(vec![("x-checksum".into(), "abc".into())])),
            cap: 0,
            read_first: 0,
        };
        check(&case, case.exact_body(), true).await.unwrap();
        check(&case, case.stream_body(), false).await.unwrap();
    })
}

#[test]
fn reading_one_byte_past_the_cap_is_refused_and_exactly_the_cap_is_not() {
    block_on(async {
        for (cap, refused) in [(100, false), (99, true)] {
            let (mut first, handle) = ReplayBody::recorded(
                StreamBody::new(futures_util::stream::iter(vec![
                    Ok::<_, Infallible>(Frame::data(chunk(60, 1))),
                    Ok(Frame::data(chunk(40, 2))),
                    Ok(Frame::data(chunk(10, 3))),
                ])),
                cap,
            );
            first.frame().await.unwrap().unwrap();
            first.frame().await.unwrap().unwrap();
            drop(first);
            assert_eq!(handle.replay().is_err(), refused, "cap {cap}");
        }
    })
}
