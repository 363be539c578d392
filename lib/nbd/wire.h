/* SPDX-License-Identifier: MIT */
/* The NBD protocol on the wire: magics, flags, option, reply, command and
 * error numbers, and the fixed-size headers with big-endian accessors. */
#ifndef PRL_NBD_WIRE_H
#define PRL_NBD_WIRE_H

#include <assert.h>
#include <endian.h>
#include <stdint.h>
#include <string.h>

/* Handshake magics (64 bits, big-endian on the wire). */
#define PRL_NBD_MAGIC_INIT 0x4e42444d41474943ull /* "NBDMAGIC" */
#define PRL_NBD_MAGIC_OPTS 0x49484156454F5054ull /* "IHAVEOPT" */
#define PRL_NBD_MAGIC_REP 0x0003e889045565a9ull  /* option replies */

/* Transmission magics (32 bits). */
#define PRL_NBD_MAGIC_REQUEST 0x25609513u
#define PRL_NBD_MAGIC_EXT_REQUEST 0x21e41c71u
#define PRL_NBD_MAGIC_SIMPLE_REPLY 0x67446698u
#define PRL_NBD_MAGIC_STRUCT_REPLY 0x668e33efu
#define PRL_NBD_MAGIC_EXT_REPLY 0x6e8a278cu

/* Handshake flags (server, 16 bits) and client flags (32 bits). */
#define PRL_NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define PRL_NBD_FLAG_NO_ZEROES (1u << 1)
#define PRL_NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define PRL_NBD_FLAG_C_NO_ZEROES (1u << 1)

/* Transmission flags (16 bits). */
#define PRL_NBD_FLAG_HAS_FLAGS (1u << 0)
#define PRL_NBD_FLAG_READ_ONLY (1u << 1)
#define PRL_NBD_FLAG_SEND_FLUSH (1u << 2)
#define PRL_NBD_FLAG_SEND_FUA (1u << 3)
#define PRL_NBD_FLAG_ROTATIONAL (1u << 4)
#define PRL_NBD_FLAG_SEND_TRIM (1u << 5)
#define PRL_NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define PRL_NBD_FLAG_SEND_DF (1u << 7)
#define PRL_NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define PRL_NBD_FLAG_SEND_RESIZE (1u << 9)
#define PRL_NBD_FLAG_SEND_CACHE (1u << 10)
#define PRL_NBD_FLAG_SEND_FAST_ZERO (1u << 11)
#define PRL_NBD_FLAG_BLOCK_STATUS_PAYLOAD (1u << 12)

/* Options. */
#define PRL_NBD_OPT_EXPORT_NAME 1u
#define PRL_NBD_OPT_ABORT 2u
#define PRL_NBD_OPT_LIST 3u
#define PRL_NBD_OPT_PEEK_EXPORT 4u
#define PRL_NBD_OPT_STARTTLS 5u
#define PRL_NBD_OPT_INFO 6u
#define PRL_NBD_OPT_GO 7u
#define PRL_NBD_OPT_STRUCTURED_REPLY 8u
#define PRL_NBD_OPT_LIST_META_CONTEXT 9u
#define PRL_NBD_OPT_SET_META_CONTEXT 10u
#define PRL_NBD_OPT_EXTENDED_HEADERS 11u

/* Option reply types; errors have bit 31 set. */
#define PRL_NBD_REP_ACK 1u
#define PRL_NBD_REP_SERVER 2u
#define PRL_NBD_REP_INFO 3u
#define PRL_NBD_REP_META_CONTEXT 4u
#define PRL_NBD_REP_ERR(n) ((1u << 31) | (n))
#define PRL_NBD_REP_ERR_UNSUP PRL_NBD_REP_ERR(1)
#define PRL_NBD_REP_ERR_POLICY PRL_NBD_REP_ERR(2)
#define PRL_NBD_REP_ERR_INVALID PRL_NBD_REP_ERR(3)
#define PRL_NBD_REP_ERR_PLATFORM PRL_NBD_REP_ERR(4)
#define PRL_NBD_REP_ERR_TLS_REQD PRL_NBD_REP_ERR(5)
#define PRL_NBD_REP_ERR_UNKNOWN PRL_NBD_REP_ERR(6)
#define PRL_NBD_REP_ERR_SHUTDOWN PRL_NBD_REP_ERR(7)
#define PRL_NBD_REP_ERR_BLOCK_SIZE_REQD PRL_NBD_REP_ERR(8)
#define PRL_NBD_REP_ERR_TOO_BIG PRL_NBD_REP_ERR(9)
#define PRL_NBD_REP_ERR_EXT_HEADER_REQD PRL_NBD_REP_ERR(10)

/* NBD_REP_INFO types. */
#define PRL_NBD_INFO_EXPORT 0u
#define PRL_NBD_INFO_NAME 1u
#define PRL_NBD_INFO_DESCRIPTION 2u
#define PRL_NBD_INFO_BLOCK_SIZE 3u

/* Commands. */
#define PRL_NBD_CMD_READ 0u
#define PRL_NBD_CMD_WRITE 1u
#define PRL_NBD_CMD_DISC 2u
#define PRL_NBD_CMD_FLUSH 3u
#define PRL_NBD_CMD_TRIM 4u
#define PRL_NBD_CMD_CACHE 5u
#define PRL_NBD_CMD_WRITE_ZEROES 6u
#define PRL_NBD_CMD_BLOCK_STATUS 7u

/* Command flags. */
#define PRL_NBD_CMD_FLAG_FUA (1u << 0)
#define PRL_NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define PRL_NBD_CMD_FLAG_DF (1u << 2)
#define PRL_NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define PRL_NBD_CMD_FLAG_FAST_ZERO (1u << 4)
#define PRL_NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)

/* Structured / extended reply flags and chunk types. */
#define PRL_NBD_REPLY_FLAG_DONE (1u << 0)
#define PRL_NBD_REPLY_TYPE_NONE 0u
#define PRL_NBD_REPLY_TYPE_OFFSET_DATA 1u
#define PRL_NBD_REPLY_TYPE_OFFSET_HOLE 2u
#define PRL_NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define PRL_NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6u
#define PRL_NBD_REPLY_TYPE_ERROR ((1u << 15) | 1u)
#define PRL_NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2u)

/* base:allocation status bits. */
#define PRL_NBD_STATE_HOLE (1u << 0)
#define PRL_NBD_STATE_ZERO (1u << 1)
/* qemu:dirty-bitmap:NAME status bit. */
#define PRL_NBD_STATE_DIRTY (1u << 0)

/* Error values: fixed by the protocol, independent of the host's errno. */
#define PRL_NBD_EPERM 1u
#define PRL_NBD_EIO 5u
#define PRL_NBD_ENOMEM 12u
#define PRL_NBD_EINVAL 22u
#define PRL_NBD_ENOSPC 28u
#define PRL_NBD_EOVERFLOW 75u
#define PRL_NBD_ENOTSUP 95u
#define PRL_NBD_ESHUTDOWN 108u

/* Strings (names, messages) MUST NOT exceed this many bytes. */
#define PRL_NBD_MAX_STRING 4096u

/*
 * Fixed headers.  Fields are big-endian on the wire; the structs are
 * packed images of the bytes and are only ever memcpy'd to or from a
 * buffer, and their fields converted with the be*toh / htobe* helpers
 * below, never read in host order.
 */
/* Client option header. */
struct prl_nbd_opt_hdr {
    uint64_t magic; /* PRL_NBD_MAGIC_OPTS */
    uint32_t option;
    uint32_t length; /* bytes of option data that follow */
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_opt_hdr) == 16, "option header");

/* Server option reply header. */
struct prl_nbd_opt_reply {
    uint64_t magic; /* PRL_NBD_MAGIC_REP */
    uint32_t option;
    uint32_t type; /* PRL_NBD_REP_* */
    uint32_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_opt_reply) == 20, "option reply");

/* Answer to NBD_OPT_EXPORT_NAME. */
struct prl_nbd_export_name_reply {
    uint64_t size;
    uint16_t flags;
    uint8_t zeroes[124]; /* omitted with NO_ZEROES */
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_export_name_reply) == 134,
              "export name reply");

/* NBD_REP_INFO payload, INFO_EXPORT. */
struct prl_nbd_info_export {
    uint16_t type;
    uint64_t size;
    uint16_t flags;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_info_export) == 12, "info export");

struct prl_nbd_info_block_size {
    uint16_t type;
    uint32_t minimum;
    uint32_t preferred;
    uint32_t maximum;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_info_block_size) == 14, "info bsize");

/* Compact request. */
struct prl_nbd_request {
    uint32_t magic; /* PRL_NBD_MAGIC_REQUEST */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_request) == 28, "request");

/* Extended request. */
struct prl_nbd_ext_request {
    uint32_t magic; /* PRL_NBD_MAGIC_EXT_REQUEST */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_ext_request) == 32, "ext request");

struct prl_nbd_simple_reply {
    uint32_t magic; /* PRL_NBD_MAGIC_SIMPLE_REPLY */
    uint32_t error;
    uint64_t cookie;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_simple_reply) == 16, "simple reply");

struct prl_nbd_struct_reply {
    uint32_t magic; /* PRL_NBD_MAGIC_STRUCT_REPLY */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint32_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_struct_reply) == 20, "struct reply");

struct prl_nbd_ext_reply {
    uint32_t magic; /* PRL_NBD_MAGIC_EXT_REPLY */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset; /* the request's offset */
    uint64_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_ext_reply) == 32, "ext reply");

/* Chunk payload prefixes. */
struct prl_nbd_chunk_offset_hole {
    uint64_t offset;
    uint32_t length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_chunk_offset_hole) == 12, "hole");

/* Followed by the message. */
struct prl_nbd_chunk_error {
    uint32_t error;
    uint16_t msg_length;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_chunk_error) == 6, "error chunk");

/* NBD_REPLY_TYPE_BLOCK_STATUS entry. */
struct prl_nbd_block_desc {
    uint32_t length;
    uint32_t flags;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_block_desc) == 8, "descriptor");

/* NBD_REPLY_TYPE_BLOCK_STATUS_EXT. */
struct prl_nbd_block_desc_ext {
    uint64_t length;
    uint64_t flags;
} __attribute__((packed));
static_assert(sizeof(struct prl_nbd_block_desc_ext) == 16, "ext descriptor");

/* Unaligned big-endian loads and stores for parsing raw buffers. */
static inline uint16_t prl_be16_load(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return be16toh(v);
}

static inline uint32_t prl_be32_load(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}

static inline uint64_t prl_be64_load(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}

static inline void prl_be16_store(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void prl_be32_store(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void prl_be64_store(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

#endif
