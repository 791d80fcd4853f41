/**
 * remote_kernel's JupyterLab extension: remote cells for researchers
 * (tag, Run remotely, status badges, released outputs, Datasites panel) and the
 * "Pending outputs" panel for reviewers. Tokens never reach the page: every
 * call goes to the server extension under /remote-kernel/.
 *
 * The composition root: api (the one HTTP client) → model (owns all polling and
 * signals) → cell controller, commands and the two sidebar widgets.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { RemoteKernelApi } from './api';
import { addCommands } from './commands';
import { datasitesIcon, reviewsIcon } from './icons';
import { RemoteKernelModel } from './model';
import { RemoteCellController } from './remoteCells';
import { DatasitesPanel } from './widgets/datasitesPanel';
import { ReviewDocuments } from './widgets/reviewDocument';
import { ReviewPanel } from './widgets/reviewPanel';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'remote-kernel-jupyterlab:plugin',
  description: 'Remote cells, datasites and output review for remote_kernel.',
  autoStart: true,
  requires: [INotebookTracker, IRenderMimeRegistry],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    rendermime: IRenderMimeRegistry,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new RemoteKernelModel(new RemoteKernelApi());
    const controller = new RemoteCellController(tracker, model);
    addCommands(app, tracker, controller, palette);

    const datasites = new DatasitesPanel(model, controller, tracker);
    datasites.title.icon = datasitesIcon;
    app.shell.add(datasites, 'left', { rank: 600 });

    // One output's review in the main area, opened from the queue.
    const documents = new ReviewDocuments(app, model, rendermime);
    app.commands.addCommand('remote-kernel:open-review', {
      label: 'Open Output Review',
      caption: 'Review a pending output in the main area',
      execute: args =>
        documents.showById(String(args.site ?? ''), Number(args.id ?? -1))
    });
    const reviews = new ReviewPanel(model, rendermime, item =>
      documents.show(item)
    );
    reviews.title.icon = reviewsIcon;
    app.shell.add(reviews, 'left', { rank: 601 });

    if (restorer) {
      restorer.add(datasites, datasites.id);
      restorer.add(reviews, reviews.id);
    }

    // Everything is subscribed: the first fetches, then the polls.
    model.start();
  }
};

export default plugin;
