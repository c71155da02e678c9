//! The protobuf codec of our services (client and server side): tonic's
//! prost codec with a 1 KiB starting buffer instead of tonic's 8 KiB. Every
//! call allocates one buffer to decode its request and one to encode its
//! answer; our messages are a few hundred bytes, and 8 KiB is past glibc's
//! per-thread cache, so each call paid two trips through the allocator's
//! shared bins. Larger messages (batches) grow the buffer as before.
//!
//! Requests are decoded from one contiguous slice where the frame arrived in
//! one piece (always, for our unary messages): prost's field loop then steps
//! through a `&[u8]` instead of advancing tonic's `BytesMut` view per varint
//! and per field (callgrind: most of the decode's cost outside allocation).

use prost::bytes::Buf;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Starting buffer per call: fits every unary message we exchange.
const BUFFER: usize = 1024;
/// tonic's default: yield to the runtime after this much streamed output.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// See the module documentation; named in `build.rs` (`codec_path`).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> SliceDecoder<U> {
        SliceDecoder(std::marker::PhantomData)
    }
}

/// Decodes `U` from the frame's bytes as one slice (see the module documentation).
#[derive(Debug)]
pub struct SliceDecoder<U>(std::marker::PhantomData<U>);

impl<U: prost::Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let n = buf.remaining();
        let decoded = match buf.chunk().get(..n) {
            Some(whole) => {
                let decoded = U::decode(whole);
                buf.advance(n);
                decoded
            }
            // Not reached under tonic 0.14: its DecodeBuf views one BytesMut,
            // always contiguous. Kept so that a split frame still decodes.
            None => U::decode(&mut *buf),
        };
        // As tonic-prost maps them: a message that does not parse is INTERNAL
        // (gRPC status-code guide), with prost's description.
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER, YIELD_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::{Decoder, Encoder};

    #[test]
    fn both_directions_start_with_the_small_buffer() {
        let mut c = SmallBufferCodec::<
            crate::proto::VerifyMacRequest,
            crate::proto::VerifyMacRequest,
        >::default();
        // BufferSettings has no getters; its Debug form names the fields.
        let small = format!("{:?}", BufferSettings::new(BUFFER, YIELD_THRESHOLD));
        assert!(small.contains("buffer_size: 1024"), "{small}");
        assert_eq!(format!("{:?}", c.encoder().buffer_settings()), small);
        assert_eq!(format!("{:?}", c.decoder().buffer_settings()), small);
    }
    // Messages larger than BUFFER: tests/grpc_api.rs
    // (messages_larger_than_the_codec_buffer_cross_intact).
}
