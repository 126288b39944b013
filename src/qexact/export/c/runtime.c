/* ---- qexact runtime helpers: C spells out what x86 and NumPy do where C leaves it undefined ---- */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "qexact model: float expressions must be evaluated in their own type (FLT_EVAL_METHOD 0: x86-64 SSE, AArch64)"
#endif

/* a 32-bit two's-complement add: the low 32 bits, sign-extended */
static int64_t qx_wrap32(int64_t v) {
    uint32_t u = (uint32_t)((uint64_t)v & 0xFFFFFFFFu);
    return u >= 0x80000000u ? (int64_t)u - INT64_C(4294967296) : (int64_t)u;
}

/* arithmetic shift right = floor(v / 2**s), without C's implementation-defined >> of negatives */
static int64_t qx_asr(int64_t v, int s) {
    return v >= 0 ? (v >> s) : -((-(v + 1)) >> s) - 1;
}

/* x86 cvtps2dq: round half to even (nearbyint in the default rounding mode); NaN or a result
   outside int32 gives INT32_MIN, the "integer indefinite" value */
static int64_t qx_cvtps2dq(float v) {
    double r = nearbyint((double)v);
    if (!(r >= -2147483648.0 && r <= 2147483647.0)) return INT32_MIN;
    return (int64_t)r;
}

/* round half to even in double, kept in 64 bits (clipped to +-2**62); NaN gives nan_value */
static int64_t qx_rne64(double v, int64_t nan_value) {
    double r;
    if (v != v) return nan_value;
    r = nearbyint(v);
    if (r > 4611686018427387904.0) r = 4611686018427387904.0;
    if (r < -4611686018427387904.0) r = -4611686018427387904.0;
    return (int64_t)r;
}

/* x86-64 lrintf (cvtss2si, 64 bits): NaN, infinities and values outside [-2**63, 2**63)
   give INT64_MIN */
static int64_t qx_lrint(double v) {
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0)) return INT64_MIN;
    return (int64_t)nearbyint(v);
}

/* vpmaddubsw: a pair sum of raw u8 x s8 products saturated to int16 */
static int64_t qx_sat16(int64_t v) {
    return v < -32768 ? -32768 : (v > 32767 ? 32767 : v);
}
