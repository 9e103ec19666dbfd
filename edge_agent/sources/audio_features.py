"""The TFLM audio micro-frontend, ported to numpy (integer-exact).

This is the feature extractor the micro_speech keyword model was trained with
(tensorflow/lite/experimental/microfrontend/lib, Apache-2.0): 30 ms Hann windows every 20 ms,
a 512-point fixed-point FFT (kissfft, 16-bit), a 40-channel mel filterbank from 125 to
7500 Hz, per-channel noise reduction, PCAN gain control and a fixed-point log. Every stage
follows the C code's integer arithmetic step by step (window.c, fft.cc + kiss_fftr,
filterbank.c/filterbank_util.c, noise_reduction.c, pcan_gain_control.c, log_scale.c), so
the features are the ones the model saw in training, not an approximation.

:func:`micro_frontend_features` takes one window of audio (float in [-1, 1), as the WAV
reader gives it) and returns ``(frames, 40)`` float32 features scaled as in training
(``uint16 * 10 / 256``); the model's input quantisation (scale 0.101716, zero point -128 for
micro_speech) then maps them onto int8. The state (noise estimate) starts fresh for every
window, like training did for every 1 s clip: 16000 samples give 49 frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

MICRO_FRONTEND_CHANNELS = 40
FEATURE_SCALE = 10.0 / 256.0  # training multiplied the uint16 features by this

WINDOW_MS, STEP_MS = 30, 20
LOWER_HZ, UPPER_HZ = 125.0, 7500.0
WINDOW_BITS = 12  # kFrontendWindowBits
FILTERBANK_BITS = 12  # kFilterbankBits
NOISE_BITS = 14  # kNoiseReductionBits
SMOOTHING_BITS = 10
EVEN_SMOOTHING, ODD_SMOOTHING, MIN_SIGNAL_REMAINING = 0.025, 0.06, 0.05
PCAN_STRENGTH, PCAN_OFFSET, PCAN_GAIN_BITS = 0.95, 80.0, 21
PCAN_SNR_BITS, PCAN_OUTPUT_BITS, WIDE_DYNAMIC_BITS = 12, 6, 32
LOG_SCALE_SHIFT = 6
LOG_SCALE_LOG2, LOG_SEGMENTS_LOG2, LOG_COEFF = 16, 7, 45426
# log_lut.c's table: the correction log2(1 + f) - f in 1/65536 over 128 segments of f, with
# one entry of padding (computed here; it equals the C table entry by entry)
_SEGMENTS = np.arange((1 << LOG_SEGMENTS_LOG2) + 1) / (1 << LOG_SEGMENTS_LOG2)
LOG_LUT = np.append(np.floor((1 << LOG_SCALE_LOG2) * (np.log2(1 + _SEGMENTS) - _SEGMENTS) + 0.5),
                    0).astype(np.int64)


def _msb(x: np.ndarray) -> np.ndarray:
    """MostSignificantBit32/64: the number of significant bits (0 for 0)."""
    x = np.asarray(x, dtype=np.uint64)
    out = np.zeros(x.shape, np.int64)
    nz = x > 0
    out[nz] = np.floor(np.log2(x[nz].astype(np.float64))).astype(np.int64) + 1
    # log2 of values just below a power of two may round up: correct by one
    too_big = nz & ((np.uint64(1) << (out - 1).clip(0).astype(np.uint64)) > x)
    out[too_big] -= 1
    return out


def _wrap16(x: np.ndarray) -> np.ndarray:
    """Store into int16 (two's complement wrap), as the C code's assignments do."""
    return ((x + 32768) & 0xFFFF) - 32768


def _sround(x: np.ndarray) -> np.ndarray:
    return (x + (1 << 14)) >> 15  # kissfft FRACBITS 15, arithmetic shift


def _cexp(phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.floor(0.5 + 32767 * np.cos(phase)).astype(np.int64),
            np.floor(0.5 + 32767 * np.sin(phase)).astype(np.int64))


@dataclass(frozen=True)
class _Tables:
    size: int  # window samples
    step: int
    fft_size: int
    coefficients: np.ndarray  # (size,) int64 Hann window, 12-bit
    twiddles: tuple[np.ndarray, np.ndarray]  # complex FFT of fft_size/2
    super_twiddles: tuple[np.ndarray, np.ndarray]
    weights: np.ndarray  # (41, bins) int64: weight of bin for channel
    unweights: np.ndarray  # (41, bins) int64
    gain_lut: np.ndarray  # (125,) int64
    snr_shift: int
    correction_bits: int


@functools.lru_cache(maxsize=4)
def _tables(sample_rate: int) -> _Tables:
    size = WINDOW_MS * sample_rate // 1000
    step = STEP_MS * sample_rate // 1000
    fft_size = 1 << max(0, (size - 1).bit_length())
    # window_util.c: float32 arg, double cos, float32 value, rounded to 12 bits
    arg = np.float32(math.pi * 2.0) / np.float32(size)
    i = np.arange(size)
    val = (0.5 - 0.5 * np.cos((arg * (i + np.float32(0.5)).astype(np.float32))
                              .astype(np.float64))).astype(np.float32)
    coefficients = np.floor(val.astype(np.float64) * (1 << WINDOW_BITS) + 0.5).astype(np.int64)
    n = fft_size // 2
    twiddles = _cexp(-2 * math.pi * np.arange(n) / n)
    super_twiddles = _cexp(-math.pi * ((np.arange(n // 2) + 1) / n + 0.5))
    weights, unweights = _filterbank(sample_rate, fft_size // 2 + 1)
    correction = (fft_size.bit_length()) - 1 - FILTERBANK_BITS // 2
    return _Tables(size, step, fft_size, coefficients, twiddles, super_twiddles, weights,
                   unweights, _gain_lut(SMOOTHING_BITS - correction),
                   PCAN_GAIN_BITS - correction - PCAN_SNR_BITS, correction)


def _filterbank(sample_rate: int, spectrum_size: int) -> tuple[np.ndarray, np.ndarray]:
    """filterbank_util.c as dense (channels + 1, bins) weight and unweight matrices."""

    def mel(freq: float) -> float:
        return float(np.float32(1127.0 * math.log1p(freq / 700.0)))

    chans = MICRO_FRONTEND_CHANNELS + 1
    mel_low, mel_hi = mel(LOWER_HZ), mel(UPPER_HZ)
    spacing = np.float32(np.float32(mel_hi - mel_low) / np.float32(chans))
    centers = [float(np.float32(mel_low + spacing * (c + 1))) for c in range(chans)]
    hz_per_sbin = float(np.float32(0.5 * sample_rate / np.float32(spectrum_size - 1)))
    start = int(1.5 + LOWER_HZ / hz_per_sbin)
    weights = np.zeros((chans, spectrum_size), np.int64)
    unweights = np.zeros((chans, spectrum_size), np.int64)
    freq_start = start
    for c in range(chans):
        freq = freq_start
        while mel(freq * hz_per_sbin) <= centers[c]:
            freq += 1
        denom = mel_low if c == 0 else centers[c - 1]
        for f in range(freq_start, freq):
            w = np.float32((centers[c] - mel(f * hz_per_sbin)) / np.float32(centers[c] - denom))
            weights[c, f] = math.floor(float(w) * (1 << FILTERBANK_BITS) + 0.5)
            unweights[c, f] = math.floor((1.0 - float(w)) * (1 << FILTERBANK_BITS) + 0.5)
        freq_start = freq
    return weights, unweights


def _gain_lut(input_bits: int) -> np.ndarray:
    """pcan_gain_control_util.c: the piecewise-quadratic gain table (125 entries)."""

    def gain(x: int) -> int:
        xf = np.float32(x) / np.float32(1 << input_bits)
        g = np.float32(1 << PCAN_GAIN_BITS) * np.power(np.float32(xf + np.float32(PCAN_OFFSET)),
                                                       np.float32(-PCAN_STRENGTH))
        return 0x7FFF if g > 0x7FFF else int(np.float32(g + np.float32(0.5)))

    lut = np.zeros(4 * WIDE_DYNAMIC_BITS - 3, np.int64)
    lut[0], lut[1] = gain(0), gain(1)
    for interval in range(2, WIDE_DYNAMIC_BITS + 1):
        x0 = 1 << (interval - 1)
        x1 = x0 + (x0 >> 1)
        x2 = x0 + (x0 - 1) if interval == WIDE_DYNAMIC_BITS else 2 * x0
        y0, y1, y2 = gain(x0), gain(x1), gain(x2)
        a1 = 4 * (y1 - y0) - (y2 - y0)
        a2 = (y2 - y0) - a1
        base = 4 * interval - 6
        lut[base], lut[base + 1], lut[base + 2] = y0, _wrap16(np.int64(a1)), _wrap16(np.int64(a2))
    return lut


def _kiss_fft(re: np.ndarray, im: np.ndarray, tw: tuple[np.ndarray, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
    """kissfft's fixed-point complex FFT for n = 4^s, batched on axis 0.

    kissfft recurses (decimation in time, radix 4); the same arithmetic runs here stage by
    stage on base-4 digit-reversed input, every block of a stage at once.
    """
    batch, n = re.shape
    digits = round(math.log(n, 4))
    p = np.arange(n)
    perm = np.zeros(n, np.int64)
    for d in range(digits):  # the most significant digit of the position is x's lowest
        perm += ((p // 4 ** (digits - 1 - d)) % 4) * 4 ** d
    re, im = re[:, perm], im[:, perm]

    def fixdiv4(x: np.ndarray) -> np.ndarray:
        return _wrap16(_sround(x * (32767 // 4)))

    m = 1
    while m < n:
        fstride = n // (4 * m)
        r = fixdiv4(re.reshape(batch, n // (4 * m), 4, m))
        i = fixdiv4(im.reshape(batch, n // (4 * m), 4, m))
        k = np.arange(m)
        s = []
        for j in (1, 2, 3):
            twr, twi = tw[0][k * fstride * j], tw[1][k * fstride * j]
            fr, fi = r[:, :, j], i[:, :, j]
            s.append((_wrap16(_sround(fr * twr - fi * twi)),
                      _wrap16(_sround(fr * twi + fi * twr))))
        (s0r, s0i), (s1r, s1i), (s2r, s2i) = s
        f0r, f0i = r[:, :, 0], i[:, :, 0]
        s5r, s5i = _wrap16(f0r - s1r), _wrap16(f0i - s1i)
        a_r, a_i = _wrap16(f0r + s1r), _wrap16(f0i + s1i)
        s3r, s3i = _wrap16(s0r + s2r), _wrap16(s0i + s2i)
        s4r, s4i = _wrap16(s0r - s2r), _wrap16(s0i - s2i)
        re = np.stack([_wrap16(a_r + s3r), _wrap16(s5r + s4i), _wrap16(a_r - s3r),
                       _wrap16(s5r - s4i)], axis=2).reshape(batch, n)
        im = np.stack([_wrap16(a_i + s3i), _wrap16(s5i - s4r), _wrap16(a_i - s3i),
                       _wrap16(s5i + s4r)], axis=2).reshape(batch, n)
        m *= 4
    return re, im


def _kiss_fftr(x: np.ndarray, t: _Tables) -> tuple[np.ndarray, np.ndarray]:
    """kiss_fftr: (batch, fft_size) int16 -> (batch, fft_size/2 + 1) complex int16."""
    n = t.fft_size // 2
    zr, zi = _kiss_fft(x[:, 0::2], x[:, 1::2], t.twiddles)
    batch = x.shape[0]
    out_r = np.zeros((batch, n + 1), np.int64)
    out_i = np.zeros((batch, n + 1), np.int64)

    def fixdiv2(v: np.ndarray) -> np.ndarray:
        return _wrap16(_sround(v * (32767 // 2)))

    dcr, dci = fixdiv2(zr[:, 0]), fixdiv2(zi[:, 0])
    out_r[:, 0] = _wrap16(dcr + dci)
    out_r[:, n] = _wrap16(dcr - dci)
    k = np.arange(1, n // 2 + 1)
    fpk_r, fpk_i = fixdiv2(zr[:, k]), fixdiv2(zi[:, k])
    fpnk_r, fpnk_i = fixdiv2(zr[:, n - k]), fixdiv2(_wrap16(-zi[:, n - k]))
    f1r, f1i = _wrap16(fpk_r + fpnk_r), _wrap16(fpk_i + fpnk_i)
    f2r, f2i = _wrap16(fpk_r - fpnk_r), _wrap16(fpk_i - fpnk_i)
    stw_r, stw_i = t.super_twiddles[0][k - 1], t.super_twiddles[1][k - 1]
    twr = _wrap16(_sround(f2r * stw_r - f2i * stw_i))
    twi = _wrap16(_sround(f2r * stw_i + f2i * stw_r))
    out_r[:, k], out_i[:, k] = _wrap16((f1r + twr) >> 1), _wrap16((f1i + twi) >> 1)
    # k = n/2 is written twice in kiss_fftr; the second assignment wins, as here
    out_r[:, n - k], out_i[:, n - k] = _wrap16((f1r - twr) >> 1), _wrap16((twi - f1i) >> 1)
    return out_r, out_i


def _rounded_sqrt(num: np.ndarray) -> np.ndarray:
    """filterbank.c Sqrt64/Sqrt32: integer square root rounded to nearest, capped."""
    num = num.astype(np.int64)
    r = np.floor(np.sqrt(num.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > num, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= num, r + 1, r)
    cap = np.where(num < (1 << 32), 0xFFFF, 0xFFFFFFFF)
    return np.where((num - r * r > r) & (r != cap), r + 1, r)


def _wide_dynamic(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """pcan_gain_control.c WideDynamicFunction, vectorised over channels."""
    small = x <= 2
    interval = _msb(x)
    base = np.clip(4 * interval - 6, 0, len(lut) - 3)
    frac = np.where(interval < 11, x << np.clip(11 - interval, 0, None),
                    x >> np.clip(interval - 11, 0, None)) & 0x3FF
    result = (lut[base + 2] * frac) >> 5
    result = result + lut[base + 1] * 32
    result = ((result * frac + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # int32 wrap
    result = (result + (1 << 14)) >> 15
    result = _wrap16(result + lut[base])
    return np.where(small, lut[np.clip(x, 0, 2)], result)


def _log(x: np.ndarray) -> np.ndarray:
    """log_scale.c Log(x, scale_shift) for x > 1."""
    integer = _msb(x) - 1
    frac = x - (np.int64(1) << integer)
    frac = np.where(integer < LOG_SCALE_LOG2, frac << np.clip(LOG_SCALE_LOG2 - integer, 0, None),
                    frac >> np.clip(integer - LOG_SCALE_LOG2, 0, None))
    base_seg = frac >> (LOG_SCALE_LOG2 - LOG_SEGMENTS_LOG2)
    seg_unit = (1 << LOG_SCALE_LOG2) >> LOG_SEGMENTS_LOG2
    c0, c1 = LOG_LUT[base_seg], LOG_LUT[base_seg + 1]
    rel_pos = ((c1 - c0) * (frac - seg_unit * base_seg)) >> LOG_SCALE_LOG2
    log2 = (integer << LOG_SCALE_LOG2) + frac + c0 + rel_pos
    rnd = (1 << LOG_SCALE_LOG2) // 2
    loge = ((LOG_COEFF * log2 + rnd) >> LOG_SCALE_LOG2) & 0xFFFFFFFF
    out: np.ndarray = (((loge << LOG_SCALE_SHIFT) & 0xFFFFFFFF) + rnd) >> LOG_SCALE_LOG2
    return out


def micro_frontend_uint16(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """The frontend's raw output: int16 audio (n,) -> (frames, 40) uint16 features."""
    t = _tables(int(sample_rate))
    audio = np.asarray(samples, dtype=np.int64)
    if len(audio) < t.size:
        return np.zeros((0, MICRO_FRONTEND_CHANNELS), np.uint16)
    frames = 1 + (len(audio) - t.size) // t.step
    idx = np.arange(t.size)[None, :] + t.step * np.arange(frames)[:, None]
    windowed = _wrap16((audio[idx] * t.coefficients) >> WINDOW_BITS)  # (frames, size)
    # int16 negation of -32768 stays negative in C, so it never counts as the maximum
    max_abs = np.where(windowed == -32768, 0, np.abs(windowed)).max(axis=1)
    shift = 15 - _msb(max_abs)  # scale each frame up to use the FFT's 16 bits
    fft_in = np.zeros((frames, t.fft_size), np.int64)
    fft_in[:, : t.size] = _wrap16((windowed & 0xFFFF) << shift[:, None])
    re, im = _kiss_fftr(fft_in, t)
    energy = (re * re + im * im) & 0xFFFFFFFF  # (frames, bins) uint32
    work = energy @ t.weights.T  # (frames, 41) uint64 accumulators, as filterbank.c
    work[:, 1:] += energy @ t.unweights[:-1].T
    signal = _rounded_sqrt(work[:, 1:]) >> shift[:, None]  # (frames, 40) uint32
    smoothing = np.where(np.arange(MICRO_FRONTEND_CHANNELS) % 2 == 0,
                         int(np.float32(EVEN_SMOOTHING) * (1 << NOISE_BITS)),
                         int(np.float32(ODD_SMOOTHING) * (1 << NOISE_BITS))).astype(np.int64)
    min_remaining = int(np.float32(MIN_SIGNAL_REMAINING) * (1 << NOISE_BITS))
    estimates = np.zeros_like(signal)
    reduced = np.zeros_like(signal)
    estimate = np.zeros(MICRO_FRONTEND_CHANNELS, np.int64)
    for f in range(frames):  # the noise estimate carries over from frame to frame
        sig = signal[f]
        scaled = (sig << SMOOTHING_BITS) & 0xFFFFFFFF
        estimate = ((scaled * smoothing + estimate * ((1 << NOISE_BITS) - smoothing))
                    >> NOISE_BITS) & 0xFFFFFFFF
        floor = (sig * min_remaining) >> NOISE_BITS
        reduced[f] = np.maximum((scaled - np.minimum(estimate, scaled)) >> SMOOTHING_BITS, floor)
        estimates[f] = estimate
    # PCAN gain control, with the gain from each frame's updated noise estimate
    gain = _wide_dynamic(estimates, t.gain_lut) & 0xFFFFFFFF
    snr = ((reduced * gain) >> t.snr_shift) & 0xFFFFFFFF
    shrunk = np.where(snr < (2 << PCAN_SNR_BITS),
                      (snr * snr) >> (2 + 2 * PCAN_SNR_BITS - PCAN_OUTPUT_BITS),
                      (snr >> (PCAN_SNR_BITS - PCAN_OUTPUT_BITS)) - (1 << PCAN_OUTPUT_BITS))
    value = (shrunk << t.correction_bits) & 0xFFFFFFFF
    logged = np.where(value > 1, _log(np.maximum(value, 2)), 0)
    return np.minimum(logged, 0xFFFF).astype(np.uint16)


def micro_frontend_features(samples: np.ndarray, sample_rate: float = 16000.0) -> np.ndarray:
    """Features of one audio window: float samples in [-1, 1) -> (frames, 40) float32.

    The values are the frontend's uint16 output times 10/256, as micro_speech was trained.
    """
    pcm = np.clip(np.rint(np.asarray(samples, np.float64) * 32768.0), -32768, 32767)
    raw = micro_frontend_uint16(pcm.astype(np.int64), round(sample_rate))
    features: np.ndarray = raw.astype(np.float32) * np.float32(FEATURE_SCALE)
    return features
