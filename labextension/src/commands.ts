/** Commands (palette, menus, toolbars, shortcuts) for remote cells. */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

import { remoteTagIcon, runRemoteIcon } from './icons';
import { hasRemoteTag } from './cells';
import { RemoteCellController } from './remoteCells';

export const CommandIDs = {
  toggleTag: 'remote-kernel:toggle-remote-tag',
  runRemotely: 'remote-kernel:run-remotely',
  runAllRemote: 'remote-kernel:run-all-remote',
  refresh: 'remote-kernel:refresh-remote-outputs'
};

export function addCommands(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  controller: RemoteCellController,
  palette: ICommandPalette | null
): void {
  const { commands } = app;
  const hasCell = () => !!tracker.currentWidget && !!tracker.activeCell;

  commands.addCommand(CommandIDs.toggleTag, {
    label: 'Toggle Remote Tag',
    caption: 'Mark or unmark the selected cells as remote (tag "remote")',
    icon: args => (args.toolbar ? remoteTagIcon : undefined),
    isEnabled: hasCell,
    isToggled: () =>
      hasRemoteTag(tracker.activeCell?.model.getMetadata('tags')),
    execute: () => {
      const panel = tracker.currentWidget;
      if (!panel) {
        return;
      }
      const selected = panel.content.widgets.filter(cell =>
        panel.content.isSelectedOrActive(cell)
      );
      controller.toggleTag(panel, selected);
    }
  });

  commands.addCommand(CommandIDs.runRemotely, {
    label: 'Run Remotely',
    caption:
      'Tag the cell "remote" and run it: on the mock here, then at the selected datasites',
    icon: args => (args.toolbar ? runRemoteIcon : undefined),
    isEnabled: hasCell,
    execute: async () => {
      const panel = tracker.currentWidget;
      const cell = tracker.activeCell;
      if (!panel || !cell) {
        return;
      }
      if (cell.model.type !== 'code') {
        await showErrorMessage(
          'Run Remotely',
          'Only code cells can run remotely.'
        );
        return;
      }
      await controller.runRemotely(panel, cell);
    }
  });

  commands.addCommand(CommandIDs.runAllRemote, {
    label: 'Run All Remote Cells',
    caption:
      'Run every cell tagged "remote", top to bottom, at the selected datasites',
    isEnabled: () => !!tracker.currentWidget,
    execute: async () => {
      const panel = tracker.currentWidget;
      if (panel) {
        await controller.runAllRemote(panel);
      }
    }
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh Released Remote Outputs',
    caption:
      'Fetch decisions on this notebook’s remote outputs from the datasites now',
    isEnabled: () => !!tracker.currentWidget,
    execute: async () => {
      const panel = tracker.currentWidget;
      if (panel) {
        await controller.refreshNotebook(panel);
      }
    }
  });

  if (palette) {
    const category = 'Remote Kernel';
    for (const command of Object.values(CommandIDs)) {
      palette.addItem({ command, category });
    }
  }
}
