import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'remote-kernel-jupyterlab:plugin',
  autoStart: true,
  activate: (_app: JupyterFrontEnd) => {
    console.log('remote_kernel extension activated');
  }
};

export default plugin;
