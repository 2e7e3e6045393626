/*
 * The iSCSI initiator of `cargo xtask bench` (docs/benchmarks.md, "Peers"): a userspace one,
 * as fio's nbd engine is for NBD. Random reads or writes of one block size, DEPTH of them in
 * flight, against one LUN for SECONDS, through libiscsi's asynchronous API (READ16 and
 * WRITE16 tasks, one iscsi_service loop). Debian's fio has no libiscsi engine, and
 * libiscsi-bin's iscsi-perf only reads, at offsets that are not block-aligned.
 *
 *   iscsi-bench URL randread|randwrite BLOCK_BYTES DEPTH SECONDS SEED
 *   URL: iscsi://HOST[:PORT]/TARGET-IQN/LUN
 *
 * Prints one JSON line: ios, iops, seconds, errors, p50_us, p99_us. Exit status 1 on any
 * failed command. Writes carry no FUA: durability is the target's setting (its write cache
 * off), as the table says. xtask builds it with gcc at run time (-liscsi).
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct slot {
	unsigned char *buf;
	struct scsi_iovec iov;
	double start;
};

static struct iscsi_context *iscsi;
static int lun, writes, block_size;
static uint32_t io_bytes;
static uint64_t blocks, rng, ios, errors;
static int in_flight;
static double deadline;
static double *lat;
static size_t lat_len, lat_cap;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t next_block(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % blocks;
}

static void record(double seconds)
{
	if (lat_len == lat_cap) {
		lat_cap = lat_cap ? 2 * lat_cap : 1 << 16;
		lat = realloc(lat, lat_cap * sizeof *lat);
		if (!lat) {
			perror("realloc");
			exit(1);
		}
	}
	lat[lat_len++] = seconds;
}

static void issue(struct slot *s);

static void done(struct iscsi_context *ctx, int status, void *data, void *private_data)
{
	struct slot *s = private_data;
	double t = now();
	(void)ctx;
	in_flight--;
	if (status != SCSI_STATUS_GOOD) {
		errors++;
		fprintf(stderr, "iscsi-bench: command failed: %s\n", iscsi_get_error(iscsi));
	} else if (t < deadline) {
		ios++;
		record(t - s->start);
	}
	scsi_free_scsi_task(data);
	if (t < deadline && !errors)
		issue(s);
}

static void issue(struct slot *s)
{
	uint64_t lba = next_block() * (io_bytes / block_size);
	struct scsi_task *task;
	s->start = now();
	if (writes)
		task = iscsi_write16_task(iscsi, lun, lba, s->buf, io_bytes, block_size, 0, 0, 0, 0, 0,
					  done, s);
	else
		task = iscsi_read16_iov_task(iscsi, lun, lba, io_bytes, block_size, 0, 0, 0, 0, 0,
					     done, s, &s->iov, 1);
	if (!task) {
		fprintf(stderr, "iscsi-bench: queueing a command: %s\n", iscsi_get_error(iscsi));
		exit(1);
	}
	in_flight++;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double quantile(double q)
{
	if (!lat_len)
		return 0;
	return lat[(size_t)(q * (lat_len - 1))] * 1e6;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: %s URL randread|randwrite BLOCK_BYTES DEPTH SECONDS SEED\n",
			argv[0]);
		return 2;
	}
	writes = !strcmp(argv[2], "randwrite");
	if (!writes && strcmp(argv[2], "randread")) {
		fprintf(stderr, "iscsi-bench: pattern %s is not randread or randwrite\n", argv[2]);
		return 2;
	}
	io_bytes = (uint32_t)strtoul(argv[3], NULL, 10);
	int depth = atoi(argv[4]);
	double seconds = atof(argv[5]);
	rng = strtoull(argv[6], NULL, 10) | 1;
	if (!io_bytes || depth < 1 || seconds <= 0) {
		fprintf(stderr, "iscsi-bench: block size, depth and seconds must be positive\n");
		return 2;
	}

	iscsi = iscsi_create_context("iqn.2026-12.aoe.bench:initiator");
	struct iscsi_url *url = iscsi ? iscsi_parse_full_url(iscsi, argv[1]) : NULL;
	if (!url) {
		fprintf(stderr, "iscsi-bench: bad URL %s: %s\n", argv[1],
			iscsi ? iscsi_get_error(iscsi) : "no context");
		return 1;
	}
	iscsi_set_targetname(iscsi, url->target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-bench: login to %s: %s\n", argv[1], iscsi_get_error(iscsi));
		return 1;
	}
	lun = url->lun;
	struct scsi_task *cap = iscsi_readcapacity16_sync(iscsi, lun);
	struct scsi_readcapacity16 *rc = cap ? scsi_datain_unmarshall(cap) : NULL;
	if (!rc || !rc->block_length || io_bytes % rc->block_length) {
		fprintf(stderr, "iscsi-bench: READ CAPACITY(16) failed or the block size does not divide %u\n",
			io_bytes);
		return 1;
	}
	block_size = rc->block_length;
	blocks = (rc->returned_lba + 1) * block_size / io_bytes;
	scsi_free_scsi_task(cap);
	if (!blocks) {
		fprintf(stderr, "iscsi-bench: the LUN is smaller than one block\n");
		return 1;
	}

	struct slot *slots = calloc(depth, sizeof *slots);
	for (int i = 0; slots && i < depth; i++) {
		if (posix_memalign((void **)&slots[i].buf, 4096, io_bytes))
			slots = NULL;
		else
			slots[i].iov = (struct scsi_iovec){ slots[i].buf, io_bytes };
	}
	if (!slots) {
		fprintf(stderr, "iscsi-bench: out of memory\n");
		return 1;
	}
	double start = now();
	deadline = start + seconds;
	for (int i = 0; i < depth; i++)
		issue(&slots[i]);
	while (in_flight > 0) {
		struct pollfd p = { .fd = iscsi_get_fd(iscsi), .events = iscsi_which_events(iscsi) };
		if (poll(&p, 1, 1000) < 0) {
			perror("poll");
			return 1;
		}
		if (iscsi_service(iscsi, p.revents) < 0) {
			fprintf(stderr, "iscsi-bench: %s\n", iscsi_get_error(iscsi));
			return 1;
		}
	}
	double elapsed = (now() < deadline ? now() : deadline) - start;
	qsort(lat, lat_len, sizeof *lat, by_value);
	printf("{\"ios\": %" PRIu64 ", \"iops\": %.1f, \"seconds\": %.3f, \"errors\": %" PRIu64
	       ", \"p50_us\": %.1f, \"p99_us\": %.1f}\n",
	       ios, ios / elapsed, elapsed, errors, quantile(0.5), quantile(0.99));
	iscsi_logout_sync(iscsi);
	iscsi_destroy_context(iscsi);
	return errors ? 1 : 0;
}
