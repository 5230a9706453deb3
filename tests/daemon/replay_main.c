/* Replays a libFuzzer corpus without libFuzzer: feeds each file named on the
 * command line, or each file of each folder named, to LLVMFuzzerTestOneInput.
 * Exits 0 when every input ran (a crash aborts the process), 1 on I/O errors
 * or when no input was found. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		return -1;
	}
	size_t cap = 4096, n = 0;
	uint8_t *buf = malloc(cap);
	for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
		n += r;
		if (n == cap) {
			uint8_t *nb = realloc(buf, cap *= 2);
			if (!nb) {
				free(buf);
				buf = NULL;
			}
			buf = nb;
		}
	}
	int bad = ferror(f) || !buf;
	fclose(f);
	if (bad) {
		fprintf(stderr, "%s: cannot read\n", path);
		free(buf);
		return -1;
	}
	/* an exact-size heap copy so ASan catches reads past the end */
	uint8_t *exact = malloc(n ? n : 1);
	memcpy(exact, buf, n);
	free(buf);
	LLVMFuzzerTestOneInput(exact, n);
	free(exact);
	return 0;
}

int main(int argc, char **argv)
{
	int ran = 0, errors = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) != 0) {
			perror(argv[i]);
			errors++;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			errors += run_file(argv[i]) != 0;
			ran++;
			continue;
		}
		struct dirent **ents;
		int n = scandir(argv[i], &ents, NULL, alphasort);
		if (n < 0) {
			perror(argv[i]);
			errors++;
			continue;
		}
		for (int k = 0; k < n; k++) {
			char p[4096];
			snprintf(p, sizeof(p), "%s/%s", argv[i], ents[k]->d_name);
			if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
				errors += run_file(p) != 0;
				ran++;
			}
			free(ents[k]);
		}
		free(ents);
	}
	printf("replayed %d inputs, %d unreadable\n", ran, errors);
	return errors || ran == 0 ? 1 : 0;
}
