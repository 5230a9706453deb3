/* The pread read backend: a bounded pool of threads.
 *
 * Used where io_uring or O_DIRECT is not available (io_uring_queue_init
 * fails; tmpfs and some network file systems refuse O_DIRECT) and for
 * --io buffered. Jobs and completions pass through two bounded queues; a
 * thread reads one job's bytes with one pread call, so short reads reach the
 * engine, which resubmits the rest exactly as for io_uring. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "stream_int.h"

#define THREADS_MAX 64u

struct job {
	unsigned slot;
	int fd;
	void *buf;
	size_t len;
	uint64_t off;
	int64_t res;
};

struct pread_be {
	struct qv__backend base;
	pthread_mutex_t mu;
	pthread_cond_t has_job, has_done;
	struct job *jobs, *done;   /* rings of cap entries */
	unsigned cap, jhead, jcount, dhead, dcount;
	unsigned n_threads;
	pthread_t threads[THREADS_MAX];
	int stop;
};

static void *worker(void *arg)
{
	struct pread_be *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && p->jcount == 0)
			pthread_cond_wait(&p->has_job, &p->mu);
		if (p->stop)
			break;
		struct job j = p->jobs[p->jhead];
		p->jhead = (p->jhead + 1) % p->cap;
		p->jcount--;
		pthread_mutex_unlock(&p->mu);
		ssize_t r;
		do
			r = pread(j.fd, j.buf, j.len, (off_t)j.off);
		while (r < 0 && errno == EINTR);
		j.res = r < 0 ? -errno : r;
		pthread_mutex_lock(&p->mu);
		p->done[(p->dhead + p->dcount) % p->cap] = j;
		p->dcount++;
		pthread_cond_signal(&p->has_done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int p_submit(struct qv__backend *b, unsigned slot, const struct qv__target *t, void *buf,
                    size_t len, uint64_t off)
{
	struct pread_be *p = (struct pread_be *)b;
	pthread_mutex_lock(&p->mu);
	if (p->jcount + p->dcount >= p->cap) {
		pthread_mutex_unlock(&p->mu);
		return -EBUSY;
	}
	p->jobs[(p->jhead + p->jcount) % p->cap] = (struct job){slot, t->fd, buf, len, off, 0};
	p->jcount++;
	pthread_cond_signal(&p->has_job);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

static int p_flush(struct qv__backend *b)
{
	(void)b;
	return 0;
}

static int p_reap(struct qv__backend *b, unsigned *slot, int64_t *res)
{
	struct pread_be *p = (struct pread_be *)b;
	pthread_mutex_lock(&p->mu);
	while (p->dcount == 0)
		pthread_cond_wait(&p->has_done, &p->mu);
	struct job j = p->done[p->dhead];
	p->dhead = (p->dhead + 1) % p->cap;
	p->dcount--;
	pthread_mutex_unlock(&p->mu);
	*slot = j.slot;
	*res = j.res;
	return 0;
}

static void p_destroy(struct qv__backend *b)
{
	struct pread_be *p = (struct pread_be *)b;
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->has_job);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->has_job);
	pthread_cond_destroy(&p->has_done);
	pthread_mutex_destroy(&p->mu);
	free(p->jobs);
	free(p->done);
	free(p);
}

int qv__pread_create(unsigned n_threads, unsigned qd, struct qv__backend **out)
{
	struct pread_be *p = calloc(1, sizeof(*p));
	*out = NULL;
	if (!p)
		return -ENOMEM;
	p->base = (struct qv__backend){"pread", p_submit, p_flush, p_reap, p_destroy};
	p->cap = qd;
	p->jobs = calloc(qd, sizeof(*p->jobs));
	p->done = calloc(qd, sizeof(*p->done));
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->has_job, NULL);
	pthread_cond_init(&p->has_done, NULL);
	if (!p->jobs || !p->done) {
		p_destroy(&p->base);
		return -ENOMEM;
	}
	if (n_threads < 1)
		n_threads = 1;
	if (n_threads > THREADS_MAX)
		n_threads = THREADS_MAX;
	for (unsigned i = 0; i < n_threads; i++) {
		int rc = pthread_create(&p->threads[i], NULL, worker, p);
		if (rc) {
			p_destroy(&p->base);
			return -rc;
		}
		p->n_threads++;
	}
	*out = &p->base;
	return 0;
}
