/* quiverd: the node daemon's executable (the same as `quiver serve`). */
#include "daemon.h"

int main(int argc, char **argv)
{
	return daemon_main(argc, argv);
}
